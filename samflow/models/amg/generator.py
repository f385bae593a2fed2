"""Automatic mask generation over a batch of images: SAM's algorithm, batched on the device.

Per call: every crop of every image (SAM's crop layers) is an encoder input, several per encoder
call; point prompts of several crops share one decoder call; filtering, boxes and NMS run on the
device, and so does COCO RLE on a GPU (on a CPU pycocotools' encoder): only the RLE strings come
back to the host (see rle_torch).

With proposal boxes for an image, each box is decoded first (one mask per proposal, source
"box"); grid points that fall inside a *confident* box mask are then skipped (SAM's
semi-automatic stage), and grid masks duplicating a box mask (box IoU > box_nms_thresh) are
dropped.

Pixels already covered by masks found elsewhere (``covered``: the concept stage's SAM 3 masks)
work like confident box masks: grid points there are skipped, so the grid covers only the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torchvision.ops import box_convert

from samflow.models.amg import rle_torch
from samflow.models.amg.boxes import box_area, box_iou, coco_xywh, masks_to_boxes, nms
from samflow.models.amg.filters import remove_small_regions
from samflow.models.amg.grid import crop_boxes, layer_point_grids
from samflow.models.amg.maskset import MaskSet
from samflow.models.amg.params import AmgParams
from samflow.models.amg.postprocess import box_masks, point_masks

# Masks decoded at once by the small-region step (bounds its (M, H, W) int64 label maps).
_REGION_CHUNK = 16


class PromptRunner(Protocol):
    """What the engine needs from a SAM runner (samflow.models.sam.runner.SamRunner)."""

    device: torch.device

    def encode(self, images: Sequence[np.ndarray]) -> Any: ...

    def decode(
        self, enc: Any, image_indices: Sequence[int], *, points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None, multimask_output: bool = True, image_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def postprocess_masks(self, low_res_logits: torch.Tensor, enc: Any, image_index: int) -> torch.Tensor: ...


@dataclass
class _Crop:
    image: int
    box: list[int]  # xyxy in image pixels
    layer: int
    masks: list[MaskSet] = field(default_factory=list)


@dataclass
class _ImageState:
    hw: tuple[int, int]
    boxes: np.ndarray | None
    box_scores: np.ndarray | None
    box_set: MaskSet | None = None
    coverage: torch.Tensor | None = None  # (H, W) bool: pixels inside confident box masks


class MaskGenerator:
    """``MaskGenerator(runner, AmgParams()).generate(images, boxes, box_scores)``.

    Returns, per image, SA-1B records sorted by predicted_iou (descending, stable)::

        {"segmentation": {"size": [h, w], "counts": str}, "bbox": [x, y, w, h], "area": int,
         "predicted_iou": float, "stability_score": float, "point_coords": [[x, y]] or [],
         "crop_box": [x, y, w, h], "source": "grid" | "box", "proposal_score": float | None}

    ``bbox`` is COCO's (pycocotools' ``toBbox`` of the RLE: a one-pixel mask has w = 1; SAM's own
    generator writes w = 0). Box prompts have ``point_coords == []``.
    ``timings`` holds encode / decode / postprocess seconds of the last call.
    """

    def __init__(self, runner: PromptRunner, params: AmgParams | None = None) -> None:
        self.runner = runner
        self.params = params or AmgParams()
        p = self.params
        if p.point_grids is not None:
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in p.point_grids]
        else:
            self.point_grids = layer_point_grids(p.points_per_side, p.crop_n_layers, p.crop_n_points_downscale_factor)
        self.timings: dict[str, float] = {}

    @torch.no_grad()
    def generate(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray | None] | None = None,
        box_scores: Sequence[np.ndarray | None] | None = None,
        covered: Sequence[np.ndarray | None] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """``covered``: per image an (H, W) bool array of pixels no grid point should prompt, or None."""
        self.timings = {"encode_s": 0.0, "decode_s": 0.0, "postprocess_s": 0.0}
        images = [_check_image(im) for im in images]
        for name, per_image in (("boxes", boxes), ("box_scores", box_scores), ("covered", covered)):
            if per_image is not None and len(per_image) != len(images):
                raise ValueError(f"{name} has {len(per_image)} entries for {len(images)} images")
        states = [
            _ImageState(im.shape[:2], _boxes_of(boxes, i), _scores_of(box_scores, boxes, i))
            for i, im in enumerate(images)
        ]
        for i, state in enumerate(states):
            state.coverage = _coverage_of(covered, i, state.hw, self.runner.device)
        crops = self._plan_crops(states)
        records: list[list[dict[str, Any]]] = []
        step = self.params.crops_per_encode
        for start in range(0, len(crops), step):
            chunk = crops[start : start + step]
            with self._clock("encode_s"):
                enc = self.runner.encode([_cut(images[c.image], c.box) for c in chunk])
            self._box_stage(chunk, enc, states)
            self._grid_stage(chunk, enc, states)
            # Images whose crops are all decoded are finished now: their masks leave the device.
            done = len(states) if start + step >= len(crops) else crops[start + step].image
            with self._clock("postprocess_s"):
                for i in range(len(records), done):
                    own = [c for c in crops if c.image == i]
                    records.append(self._finish(states[i], own))
                    states[i].box_set = states[i].coverage = None
                    for c in own:
                        c.masks = []
        return records

    # -- planning -------------------------------------------------------------------------

    def _plan_crops(self, states: list[_ImageState]) -> list[_Crop]:
        """Crops of all images, image by image, the whole image first (box prompts need it
        before the grid of any crop of that image is decoded)."""
        p = self.params
        plan = []
        for i, state in enumerate(states):
            boxes_, layers = crop_boxes(state.hw, p.crop_n_layers, p.crop_overlap_ratio)
            plan += [_Crop(i, b, layer) for b, layer in zip(boxes_, layers)]
        return plan

    # -- box prompts ----------------------------------------------------------------------

    def _box_stage(self, chunk: list[_Crop], enc: Any, states: list[_ImageState]) -> None:
        requests = [
            (j, states[c.image].boxes)
            for j, c in enumerate(chunk)
            if c.layer == 0 and states[c.image].boxes is not None and len(states[c.image].boxes)
        ]
        parts: dict[int, list[tuple[MaskSet, torch.Tensor]]] = {}
        for j, start, low_res, iou in self._decode(enc, requests, kind="boxes"):
            with self._clock("postprocess_s"):
                state = states[chunk[j].image]
                scores = torch.as_tensor(state.box_scores[start : start + iou.shape[0]])
                parts.setdefault(j, []).append(
                    box_masks(low_res, iou, self._upsampler(enc, j), state.hw, scores, self.params)
                )
        for j, results in parts.items():
            state = states[chunk[j].image]
            state.box_set = MaskSet.cat([r[0] for r in results])
            boxed = torch.stack([r[1] for r in results]).any(dim=0)
            state.coverage = boxed if state.coverage is None else state.coverage | boxed

    # -- point grid -----------------------------------------------------------------------

    def _grid_stage(self, chunk: list[_Crop], enc: Any, states: list[_ImageState]) -> None:
        requests = [(j, self._crop_points(c, states[c.image])) for j, c in enumerate(chunk)]
        for j, start, low_res, iou in self._decode(enc, requests, kind="points"):
            with self._clock("postprocess_s"):
                crop = chunk[j]
                points = requests[j][1][start : start + iou.shape[0]]
                crop.masks.append(
                    point_masks(
                        low_res, iou, points, self._upsampler(enc, j), crop.box, states[crop.image].hw, self.params
                    )
                )

    def _crop_points(self, crop: _Crop, state: _ImageState) -> np.ndarray:
        """Grid points of the crop layer in crop pixels (x, y), minus those on covered pixels."""
        x0, y0, x1, y1 = crop.box
        points = self.point_grids[crop.layer] * np.array([[x1 - x0, y1 - y0]], dtype=np.float64)
        if state.coverage is None:
            return points
        h, w = state.hw
        cols = np.clip(np.floor(points[:, 0] + x0).astype(np.int64), 0, w - 1)
        rows = np.clip(np.floor(points[:, 1] + y0).astype(np.int64), 0, h - 1)
        device = state.coverage.device
        rows_t, cols_t = torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)
        covered = state.coverage[rows_t, cols_t].cpu().numpy()
        return points[~covered]

    # -- decoding -------------------------------------------------------------------------

    def _decode(
        self, enc: Any, requests: list[tuple[int, np.ndarray]], kind: str
    ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """Decodes the prompts of several encoded crops, ``prompts_per_decode`` at most per
        decoder call, and yields them ``points_per_batch`` at a time (the unit of
        post-processing memory) as (encoding index, first prompt, low-res logits, IoU).

        Each round takes the next ``span`` prompts of every crop that has some left, ``span``
        a multiple of points_per_batch chosen so all crops fit one call when they can; crops
        of a round share calls, a shorter list padded by repeating its last prompt (the
        padding is dropped).
        """
        ppb = self.params.points_per_batch
        budget = self.params.prompts_per_decode
        active_requests = [(j, p) for j, p in requests if len(p)]
        if not active_requests:
            return
        span = ppb * max(1, budget // (ppb * len(active_requests)))
        per_call = max(1, budget // span)
        longest = max(len(p) for _, p in active_requests)
        for start in range(0, longest, span):
            active = [(j, p[start : start + span]) for j, p in active_requests if len(p) > start]
            for g in range(0, len(active), per_call):
                group = active[g : g + per_call]
                low_res, iou = self._decode_call(enc, group, kind)
                for b, (j, p) in enumerate(group):
                    for sub in range(0, len(p), ppb):
                        stop = min(sub + ppb, len(p))
                        yield j, start + sub, low_res[b, sub:stop], iou[b, sub:stop]

    def _decode_call(
        self, enc: Any, group: list[tuple[int, np.ndarray]], kind: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = torch.as_tensor(_pad_stack([p for _, p in group]), dtype=torch.float32, device=self.runner.device)
        indices = [j for j, _ in group]
        with self._clock("decode_s"):
            if kind == "points":
                return self.runner.decode(enc, indices, points=prompts, multimask_output=True, image_only=True)
            return self.runner.decode(enc, indices, boxes=prompts, multimask_output=False, image_only=True)

    def _upsampler(self, enc: Any, index: int):
        return lambda low_res: self.runner.postprocess_masks(low_res, enc, index)

    # -- per image ------------------------------------------------------------------------

    def _finish(self, state: _ImageState, crops: list[_Crop]) -> list[dict[str, Any]]:
        p = self.params
        device = self.runner.device
        per_crop = []
        for crop in crops:
            masks = MaskSet.cat(crop.masks) if crop.masks else MaskSet.empty(device)
            per_crop.append(masks.select(nms(masks.boxes, masks.iou_preds, p.box_nms_thresh)))
        grid = MaskSet.cat(per_crop)
        if len(crops) > 1:  # duplicates across crops: prefer the mask from the smaller crop
            grid = grid.select(nms(grid.boxes, 1 / box_area(grid.crop_boxes), p.crop_nms_thresh))
        masks = grid
        if state.box_set is not None:
            masks = MaskSet.cat([state.box_set, _drop_duplicates_of(grid, state.box_set, p.box_nms_thresh)])
        if p.min_mask_region_area > 0 and len(masks):
            masks = _clean_regions(masks, state.hw, p.min_mask_region_area, max(p.box_nms_thresh, p.crop_nms_thresh))
        order = torch.sort(masks.iou_preds, descending=True, stable=True).indices
        if p.max_masks_per_image > 0:
            order = order[: p.max_masks_per_image]
        return _records(masks.select(order), state.hw)

    @contextlib.contextmanager
    def _clock(self, name: str) -> Iterator[None]:
        _sync(self.runner.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.runner.device)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def _drop_duplicates_of(grid: MaskSet, box_set: MaskSet, threshold: float) -> MaskSet:
    """Grid masks whose box overlaps no box-prompt mask by more than ``threshold``."""
    if len(grid) == 0 or len(box_set) == 0:
        return grid
    iou = box_iou(grid.boxes.float(), box_set.boxes.float())
    return grid.select(~(iou > threshold).any(dim=1))


def _clean_regions(masks: MaskSet, hw: tuple[int, int], min_area: int, nms_thresh: float) -> MaskSet:
    """SAM's small-region post-processing: fill small holes, drop small islands, recompute boxes,
    then NMS preferring unchanged masks (box-prompt masks are always kept)."""
    h, w = hw
    device = masks.areas.device
    new_counts, new_areas, new_boxes, changed = [], [], [], []
    for s in range(0, len(masks), _REGION_CHUNK):
        dense = rle_torch.decode(masks.counts[s : s + _REGION_CHUNK], h, w, device)
        dense, part_changed = remove_small_regions(dense, min_area)
        counts, areas = rle_torch.encode(dense)
        new_counts += counts
        new_areas.append(areas.to(device))
        new_boxes.append(masks_to_boxes(dense))
        changed.append(part_changed)
    updated = MaskSet(**{**masks.__dict__, "counts": new_counts, "areas": torch.cat(new_areas),
                         "boxes": torch.cat(new_boxes)})
    unchanged = (~torch.cat(changed)).float()
    return updated.select(nms(updated.boxes, unchanged, nms_thresh, protected=updated.from_box))


def _records(masks: MaskSet, hw: tuple[int, int]) -> list[dict[str, Any]]:
    """SA-1B records; one host transfer per field."""
    counts = masks.counts
    area = masks.areas.tolist()
    xywh = coco_xywh(masks.boxes, masks.areas).tolist()
    crop_xywh = box_convert(masks.crop_boxes.double(), "xyxy", "xywh").tolist()
    iou = masks.iou_preds.tolist()
    stability = masks.stability.tolist()
    points = masks.points.tolist()
    from_box = masks.from_box.tolist()
    scores = masks.proposal_scores.tolist()
    size = [int(hw[0]), int(hw[1])]
    return [
        {
            "segmentation": {"size": list(size), "counts": counts[i]},
            "bbox": xywh[i],
            "area": int(area[i]),
            "predicted_iou": float(iou[i]),
            "stability_score": float(stability[i]),
            "point_coords": [] if from_box[i] else [points[i]],
            "crop_box": crop_xywh[i],
            "source": "box" if from_box[i] else "grid",
            "proposal_score": None if (not from_box[i] or np.isnan(scores[i])) else float(scores[i]),
        }
        for i in range(len(counts))
    ]


def _pad_stack(arrays: list[np.ndarray]) -> np.ndarray:
    n = max(len(a) for a in arrays)
    return np.stack([np.concatenate([a, np.repeat(a[-1:], n - len(a), axis=0)]) for a in arrays])


def _cut(image: np.ndarray, box: list[int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return image


def _boxes_of(boxes: Sequence[np.ndarray | None] | None, i: int) -> np.ndarray | None:
    if boxes is None or boxes[i] is None:
        return None
    b = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4)
    return b if len(b) else None


def _scores_of(
    scores: Sequence[np.ndarray | None] | None, boxes: Sequence[np.ndarray | None] | None, i: int
) -> np.ndarray | None:
    b = _boxes_of(boxes, i)
    if b is None:
        return None
    if scores is None or scores[i] is None:
        return np.full(len(b), np.nan, dtype=np.float32)
    s = np.asarray(scores[i], dtype=np.float32).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"image {i}: {len(b)} boxes but {len(s)} box scores")
    return s


def _coverage_of(
    covered: Sequence[np.ndarray | None] | None, i: int, hw: tuple[int, int], device: torch.device
) -> torch.Tensor | None:
    if covered is None or covered[i] is None:
        return None
    mask = np.asarray(covered[i], dtype=bool)
    if mask.shape != tuple(hw):
        raise ValueError(f"image {i}: covered mask {mask.shape} does not match the image {tuple(hw)}")
    return torch.as_tensor(mask, device=device)


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
