"""The ``proposals`` column between propose and segment: per row, an Arrow
``list<struct<box: [x0, y0, x1, y1], score, label>>`` in the pixels the propose stage saw, best
first; ``label`` holds a class name or a query, "" for class-agnostic boxes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

COLUMN = "proposals"
PROPOSAL = pa.struct([("box", pa.list_(pa.float32(), 4)), ("score", pa.float32()), ("label", pa.string())])
PROPOSALS = pa.list_(PROPOSAL)


def boxes_at(batch: dict[str, Any], row: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The row's (boxes (N, 4) xyxy, scores (N,)), or None when propose did not run."""
    column = batch.get(COLUMN)
    if column is None:
        return None
    found = column[row].values
    if found is None or len(found) == 0:
        return np.zeros((0, 4), np.float64), np.zeros(0, np.float32)
    boxes = found.field("box").flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, 4)
    return boxes, found.field("score").to_numpy(zero_copy_only=False).astype(np.float32)


def labels_at(batch: dict[str, Any], row: int) -> list[str]:
    """The row's proposal class names ("" = class-agnostic), aligned with :func:`boxes_at`."""
    column = batch.get(COLUMN)
    if column is None:
        return []
    found = column[row].values
    if found is None or len(found) == 0:
        return []
    return [label or "" for label in found.field("label").to_pylist()]
