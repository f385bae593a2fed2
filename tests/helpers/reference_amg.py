"""A slow, obviously-correct reference of SAM's automatic mask generator, for fidelity tests.

Written from the published algorithm (SAM's ``SamAutomaticMaskGenerator``), one crop, one point
batch and one mask at a time, in numpy and plain Python, with pycocotools for RLE and
scikit-image for connected components. It calls the runner exactly as SAM calls its predictor:
one crop per encoder call, ``points_per_batch`` points per decoder call; the engine under test,
run with ``crops_per_encode=1`` and ``prompts_per_decode=points_per_batch``, therefore sees the
same model outputs.

Also the box-prompt extension, as the engine documents it: one mask per proposal box, no grid
point on a pixel of a confident box mask, grid masks dropped when their box IoU with a box mask
exceeds box_nms_thresh.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pycocotools import mask as coco_mask
from skimage.measure import label as skimage_label

from samflow.models.amg import AmgParams


def generate(runner, image: np.ndarray, params: AmgParams, boxes=None, box_scores=None) -> list[dict]:
    h, w = image.shape[:2]
    grids = params.point_grids or [
        grid(int(params.points_per_side / params.crop_n_points_downscale_factor**i))
        for i in range(params.crop_n_layers + 1)
    ]
    box_records, covered = [], np.zeros((h, w), dtype=bool)
    if boxes is not None and len(boxes):
        box_records, covered = box_prompts(runner, image, params, boxes, box_scores)
    records = []
    crops = crop_boxes(h, w, params.crop_n_layers, params.crop_overlap_ratio)
    for crop, layer in crops:
        records += one_crop(runner, image, params, crop, grids[layer], covered)
    if len(crops) > 1:
        for r in records:
            cx0, cy0, cx1, cy1 = r["crop_xyxy"]
            r["crop_score"] = np.float32(1.0) / np.float32((cx1 - cx0) * (cy1 - cy0))
        records = greedy_nms(records, "crop_score", params.crop_nms_thresh)
    if box_records:
        records = [r for r in records if not any(box_iou(r["box"], b["box"]) > params.box_nms_thresh for b in box_records)]
        records = box_records + records
    if params.min_mask_region_area > 0:
        records = small_regions(records, params.min_mask_region_area, max(params.box_nms_thresh, params.crop_nms_thresh))
    records = sorted(records, key=lambda r: -r["predicted_iou"])  # Python's sort is stable
    if params.max_masks_per_image:
        records = records[: params.max_masks_per_image]
    return [finish(r, h, w) for r in records]


def grid(n: int) -> np.ndarray:
    """Cell centres, row by row; coordinates from linspace as SAM builds them (bit for bit)."""
    axis = np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    return np.array([[axis[col], axis[row]] for row in range(n) for col in range(n)], dtype=np.float64)


def crop_boxes(h: int, w: int, n_layers: int, overlap_ratio: float) -> list[tuple[list[int], int]]:
    out = [([0, 0, w, h], 0)]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(h, w) * (2 / n))
        cw = int(math.ceil((overlap * (n - 1) + w) / n))
        ch = int(math.ceil((overlap * (n - 1) + h) / n))
        for i in range(n):
            for j in range(n):
                x0, y0 = int((cw - overlap) * i), int((ch - overlap) * j)
                out.append(([x0, y0, min(x0 + cw, w), min(y0 + ch, h)], layer))
    return out


def one_crop(runner, image, params: AmgParams, crop, unit_grid, covered) -> list[dict]:
    x0, y0, x1, y1 = crop
    h, w = image.shape[:2]
    enc = runner.encode([np.ascontiguousarray(image[y0:y1, x0:x1])])
    points = unit_grid * np.array([x1 - x0, y1 - y0], dtype=np.float64)
    points = np.array([p for p in points if not covered[min(int(math.floor(p[1] + y0)), h - 1),
                                                        min(int(math.floor(p[0] + x0)), w - 1)]]).reshape(-1, 2)
    records = []
    for start in range(0, len(points), params.points_per_batch):
        batch = points[start : start + params.points_per_batch]
        low_res, iou = runner.decode(enc, [0], points=torch.as_tensor(batch[None], dtype=torch.float32))
        for i in range(len(batch)):
            for k in range(iou.shape[2]):
                record = one_mask(runner, enc, params, low_res[0, i, k], float(iou[0, i, k]), crop, (h, w))
                if record is not None:
                    record["point"] = [float(batch[i][0] + x0), float(batch[i][1] + y0)]
                    records.append(record)
    records = greedy_nms(records, "predicted_iou", params.box_nms_thresh)
    return records


def one_mask(runner, enc, params: AmgParams, low_res, iou: float, crop, image_hw, keep_all=False):
    x0, y0, x1, y1 = crop
    h, w = image_hw
    iou32 = np.float32(iou)
    if not keep_all and params.pred_iou_thresh > 0 and not iou32 > np.float32(params.pred_iou_thresh):
        return None
    logits = runner.postprocess_masks(low_res[None, None], enc, 0)[0, 0].float().numpy()
    high = int((logits > np.float32(params.mask_threshold + params.stability_score_offset)).sum())
    low = int((logits > np.float32(params.mask_threshold - params.stability_score_offset)).sum())
    # SAM divides 0 by 0 (NaN) for a mask empty at both thresholds; samflow reports 0, and no
    # threshold > 0 keeps either.
    stability = np.float32(high) / np.float32(low) if low else np.float32(0.0)
    if not keep_all and params.stability_score_thresh > 0 and not stability >= np.float32(params.stability_score_thresh):
        return None
    mask = logits > np.float32(params.mask_threshold)
    box = tight_box(mask)
    box = [box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0]
    if not keep_all:
        for value, crop_edge, image_edge in zip(box, crop, [0, 0, w, h]):
            if abs(value - crop_edge) <= 20.0 and not abs(value - image_edge) <= 20.0:
                return None
    full = np.zeros((h, w), dtype=bool)
    full[y0:y1, x0:x1] = mask
    return {"mask": full, "box": box, "predicted_iou": float(iou32), "stability_score": float(stability),
            "crop_xyxy": list(crop), "source": "grid", "proposal_score": None}


def box_prompts(runner, image, params: AmgParams, boxes, box_scores):
    h, w = image.shape[:2]
    enc = runner.encode([image])
    records, covered = [], np.zeros((h, w), dtype=bool)
    for i, box in enumerate(np.asarray(boxes, dtype=np.float64)):
        low_res, iou = runner.decode(enc, [0], boxes=torch.as_tensor(box[None, None], dtype=torch.float32),
                                     multimask_output=False)
        r = one_mask(runner, enc, params, low_res[0, 0, 0], float(iou[0, 0, 0]), [0, 0, w, h], (h, w), keep_all=True)
        r["source"] = "box"
        r["point"] = None
        r["proposal_score"] = None if box_scores is None else float(np.float32(box_scores[i]))
        confident = (params.pred_iou_thresh <= 0 or r["predicted_iou"] > np.float32(params.pred_iou_thresh)) and (
            params.stability_score_thresh <= 0 or r["stability_score"] >= np.float32(params.stability_score_thresh))
        if confident:
            covered |= r["mask"]
        records.append(r)
    return records, covered


def tight_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def box_iou(a, b) -> np.float32:
    f = np.float32
    iw = max(f(min(a[2], b[2])) - f(max(a[0], b[0])), f(0))
    ih = max(f(min(a[3], b[3])) - f(max(a[1], b[1])), f(0))
    inter = iw * ih
    area_a = (f(a[2]) - f(a[0])) * (f(a[3]) - f(a[1]))
    area_b = (f(b[2]) - f(b[0])) * (f(b[3]) - f(b[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area_a + area_b - inter)


def greedy_nms(records: list[dict], score_key: str, threshold: float, protected_key: str | None = None) -> list[dict]:
    ordered = sorted(records, key=lambda r: -r[score_key])
    kept: list[dict] = []
    for r in ordered:
        if (protected_key and r[protected_key]) or not any(box_iou(k["box"], r["box"]) > threshold for k in kept):
            kept.append(r)
    return kept


def remove_regions(mask: np.ndarray, area: int, holes: bool) -> tuple[np.ndarray, bool]:
    working = ~mask if holes else mask
    labels = skimage_label(working, connectivity=2)
    sizes = np.bincount(labels.ravel())[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area]
    if not small:
        return mask, False
    if holes:
        return mask | np.isin(labels, small), True
    keep = [i + 1 for i in range(len(sizes)) if i + 1 not in small]
    if not keep:
        keep = [int(np.argmax(sizes)) + 1]
    return np.isin(labels, keep), True


def small_regions(records: list[dict], area: int, threshold: float) -> list[dict]:
    for r in records:
        mask, changed_holes = remove_regions(r["mask"], area, holes=True)
        mask, changed_islands = remove_regions(mask, area, holes=False)
        r["mask"], r["box"] = mask, tight_box(mask)
        r["unchanged"] = float(not (changed_holes or changed_islands))
        r["is_box"] = r["source"] == "box"
    return greedy_nms(records, "unchanged", threshold, protected_key="is_box")


def finish(r: dict, h: int, w: int) -> dict:
    rle = coco_mask.encode(np.asfortranarray(r["mask"].astype(np.uint8)))
    cx0, cy0, cx1, cy1 = r["crop_xyxy"]
    return {
        "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
        "bbox": [float(v) for v in coco_mask.toBbox(rle)],  # COCO's box; SAM's ends on the last pixel
        "area": int(r["mask"].sum()),
        "predicted_iou": r["predicted_iou"],
        "stability_score": r["stability_score"],
        "point_coords": [] if r["point"] is None else [r["point"]],
        "crop_box": [float(cx0), float(cy0), float(cx1 - cx0), float(cy1 - cy0)],
        "source": r["source"],
        "proposal_score": r["proposal_score"],
    }
