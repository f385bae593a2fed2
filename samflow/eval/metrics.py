"""Mask quality figures of predictions against ground truth, per image lists of COCO RLEs.

    figures = mask_metrics(gt_rles, pred_rles, pred_scores)   # one list per image

SAM's figures: each ground-truth mask's best IoU over the image's predictions (``miou`` is their
mean, ``recall_50`` / ``recall_75`` the share at or above 0.5 / 0.75). COCO's: mask AP, AP50,
AP75 and AR@100 from pycocotools' ``COCOeval`` (class-agnostic unless asked per category:
predictions ranked by their scores, SAM's predicted IoU). IoU is ``pycocotools.mask.iou``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from samflow.schemas.rle import Rle

UNLABELLED = "object"
# COCOeval's stats for segm: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl
_STATS = {"mask_ap": 0, "mask_ap50": 1, "mask_ap75": 2, "mask_ar100": 8}


def _coco_rle(rle: Rle | dict[str, Any]) -> dict[str, Any]:
    """An RLE pycocotools accepts (string counts as bytes, list counts compressed)."""
    counts = rle["counts"]
    size = [int(v) for v in rle["size"]]
    if isinstance(counts, list):
        return coco_mask.frPyObjects({"size": size, "counts": counts}, *size)
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def best_ious(gt_rles: Sequence[Rle], pred_rles: Sequence[Rle]) -> np.ndarray:
    """For each ground-truth mask of one image, its best IoU over the predictions (0 without)."""
    if not gt_rles:
        return np.zeros(0, dtype=np.float64)
    if not pred_rles:
        return np.zeros(len(gt_rles), dtype=np.float64)
    gts = [_coco_rle(r) for r in gt_rles]
    preds = [_coco_rle(r) for r in pred_rles]
    ious = np.asarray(coco_mask.iou(preds, gts, [0] * len(gts)), dtype=np.float64)
    return ious.reshape(len(preds), len(gts)).max(axis=0)


def sam_figures(gt_rles: Sequence[Sequence[Rle]], pred_rles: Sequence[Sequence[Rle]]) -> dict[str, float]:
    """``miou``, ``recall_50``, ``recall_75`` over every ground-truth mask of every image."""
    best = np.concatenate([best_ious(g, p) for g, p in zip(gt_rles, pred_rles, strict=True)] or [np.zeros(0)])
    if best.size == 0:
        return {"miou": 0.0, "recall_50": 0.0, "recall_75": 0.0}
    return {"miou": float(best.mean()), "recall_50": float((best >= 0.5).mean()),
            "recall_75": float((best >= 0.75).mean())}


def coco_figures(
    gt_rles: Sequence[Sequence[Rle]], pred_rles: Sequence[Sequence[Rle]], pred_scores: Sequence[Sequence[float]],
    *, gt_labels: Sequence[Sequence[str]] | None = None, pred_labels: Sequence[Sequence[str]] | None = None,
    gt_crowd: Sequence[Sequence[bool]] | None = None,
) -> dict[str, Any]:
    """COCO mask AP, AP50, AP75, AR@100; class-agnostic unless both label lists are given, then
    per category (predictions whose label no ground truth has are left out)."""
    per_category = gt_labels is not None and pred_labels is not None
    names = sorted({n for labels in gt_labels or [] for n in labels}) if per_category else [UNLABELLED]
    category = {name: index + 1 for index, name in enumerate(names)}
    images, gts, dets = [], [], []
    for image_id, (gt_image, pred_image) in enumerate(zip(gt_rles, pred_rles, strict=True), start=1):
        height, width = _size(gt_image, pred_image)
        images.append({"id": image_id, "height": height, "width": width})
        for index, rle in enumerate(gt_image):
            coco = _coco_rle(rle)
            label = gt_labels[image_id - 1][index] if per_category else UNLABELLED
            crowd = bool(gt_crowd[image_id - 1][index]) if gt_crowd is not None else False
            gts.append({"id": len(gts) + 1, "image_id": image_id, "category_id": category[label],
                        "segmentation": coco, "area": float(coco_mask.area(coco)), "iscrowd": int(crowd),
                        "bbox": [float(v) for v in coco_mask.toBbox(coco)]})
        for index, rle in enumerate(pred_image):
            label = pred_labels[image_id - 1][index] if per_category else UNLABELLED
            if label in category:
                dets.append({"image_id": image_id, "category_id": category[label], "segmentation": _coco_rle(rle),
                             "score": float(pred_scores[image_id - 1][index])})
    return _evaluate(images, gts, dets, names, category, use_cats=per_category)


def _size(gt_image: Sequence[Rle], pred_image: Sequence[Rle]) -> tuple[int, int]:
    for rle in (*gt_image, *pred_image):
        return int(rle["size"][0]), int(rle["size"][1])
    return 1, 1


def _evaluate(images: list[dict], gts: list[dict], dets: list[dict], names: list[str],
              category: dict[str, int], use_cats: bool) -> dict[str, Any]:
    if not gts or not dets:  # COCOeval cannot take an empty side; nothing is found
        figures: dict[str, Any] = {name: 0.0 for name in _STATS}
        if use_cats:
            figures["per_category"] = {name: {"mask_ap": 0.0, "mask_ap50": 0.0} for name in names}
        return figures
    ground = COCO()
    ground.dataset = {"images": images, "annotations": gts,
                      "categories": [{"id": i, "name": n} for n, i in category.items()]}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval reports by printing
        ground.createIndex()
        found = ground.loadRes(dets)
        evaluation = COCOeval(ground, found, iouType="segm")
        evaluation.params.useCats = int(use_cats)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    figures = {name: _clean(evaluation.stats[index]) for name, index in _STATS.items()}
    if use_cats:
        figures["per_category"] = {name: _category_ap(evaluation, position) for position, name in enumerate(names)}
    return figures


def _category_ap(evaluation: COCOeval, position: int) -> dict[str, float]:
    """AP and AP50 of one category from COCOeval's precision array [T, R, K, A, M] (all areas,
    100 detections)."""
    precision = evaluation.eval["precision"][:, :, position, 0, -1]
    t50 = int(np.argmin(np.abs(evaluation.params.iouThrs - 0.5)))
    return {"mask_ap": _mean_valid(precision), "mask_ap50": _mean_valid(precision[t50])}


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0


def _clean(value: float) -> float:
    """COCOeval writes -1 where nothing could be measured: report 0."""
    return max(float(value), 0.0)


def mask_metrics(
    gt_rles: Sequence[Sequence[Rle]], pred_rles: Sequence[Sequence[Rle]], pred_scores: Sequence[Sequence[float]],
    *, gt_labels: Sequence[Sequence[str]] | None = None, pred_labels: Sequence[Sequence[str]] | None = None,
    gt_crowd: Sequence[Sequence[bool]] | None = None,
) -> dict[str, Any]:
    """Every figure at once, for lists with one entry per image: ``miou``, ``recall_50``,
    ``recall_75``, ``mask_ap``, ``mask_ap50``, ``mask_ap75``, ``mask_ar100``, ``images``,
    ``gt_masks``, ``pred_masks`` (and ``per_category`` when both label lists are given).
    Crowd ground truth counts only in COCO's figures, as COCO has it."""
    if not len(gt_rles) == len(pred_rles) == len(pred_scores):
        raise ValueError("gt_rles, pred_rles and pred_scores need one entry per image each")
    plain = [[r for k, r in enumerate(image) if not (gt_crowd and gt_crowd[i][k])] for i, image in enumerate(gt_rles)]
    figures: dict[str, Any] = {**sam_figures(plain, pred_rles), **coco_figures(gt_rles, pred_rles, pred_scores, gt_crowd=gt_crowd)}
    if gt_labels is not None and pred_labels is not None:
        figures["per_category"] = coco_figures(gt_rles, pred_rles, pred_scores, gt_labels=gt_labels,
                                               pred_labels=pred_labels, gt_crowd=gt_crowd)["per_category"]
    figures.update(images=len(gt_rles), gt_masks=sum(len(image) for image in plain),
                   pred_masks=sum(len(image) for image in pred_rles))
    return figures
