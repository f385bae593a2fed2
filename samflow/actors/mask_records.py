"""Mask records (SA-1B fields, COCO RLE) made by stages other than segment, and how they join the
row's ``annotations_json``: Mask R-CNN's own masks (source "maskrcnn", from propose) and class
regions (source "semantic"). Records already in the column are kept; new ones are appended."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from samflow.actors.batch import Batch, object_column
from samflow.schemas import rle


def mask_record(
    mask: np.ndarray, *, source: str, label: str | None = None, label_score: float | None = None,
    proposal_score: float | None = None,
) -> dict[str, Any] | None:
    """One SA-1B record of a (H, W) bool mask; None for an empty mask. ``bbox`` follows the
    engine's convention ([x, y, w, h] with w = x_max - x_min)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    x0, y0 = int(xs.min()), int(ys.min())
    height, width = mask.shape
    return {
        "segmentation": rle.encode(np.ascontiguousarray(mask, dtype=bool)),
        "bbox": [float(x0), float(y0), float(xs.max() - x0), float(ys.max() - y0)],
        "area": int(xs.size),
        "predicted_iou": None,
        "stability_score": None,
        "point_coords": [],
        "crop_box": [0.0, 0.0, float(width), float(height)],
        "source": source,
        "proposal_score": proposal_score,
        "label": label,
        "label_score": label_score,
    }


def append_records(batch: Batch, records: dict[int, list[dict[str, Any]]]) -> None:
    """Append ``records[row]`` to each row's ``annotations_json`` (created when absent)."""
    if not records and "annotations_json" in batch:
        return
    existing = batch.get("annotations_json")
    rows = range(len(batch["uri"]))
    batch["annotations_json"] = object_column([
        json.dumps((json.loads(existing[r]) if existing is not None else []) + records.get(r, []))
        for r in rows
    ])
