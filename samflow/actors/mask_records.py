"""Mask records (SA-1B fields, COCO RLE) made by stages other than segment: Mask R-CNN's own masks
(source "maskrcnn", from propose) and class regions (source "semantic"). They join the row's
``masks`` column through ``samflow.schemas.masks.add`` (masks already there stay first)."""

from __future__ import annotations

from typing import Any

import numpy as np

from samflow.actors.batch import Batch
from samflow.schemas import masks as mask_column
from samflow.schemas import rle


def mask_record(
    mask: np.ndarray, *, source: str, label: str | None = None, label_score: float | None = None,
    proposal_score: float | None = None,
) -> dict[str, Any] | None:
    """One SA-1B record of a (H, W) bool mask; None for an empty mask."""
    segmentation = rle.encode(np.ascontiguousarray(mask, dtype=bool))
    area = rle.area(segmentation)
    if area == 0:
        return None
    height, width = mask.shape
    return {
        "segmentation": segmentation,
        "bbox": rle.to_bbox(segmentation),
        "area": area,
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
    """Append ``records[row]`` to each row's masks (rows without an entry get none)."""
    mask_column.add(batch, [records.get(r, []) for r in range(len(batch["uri"]))])
