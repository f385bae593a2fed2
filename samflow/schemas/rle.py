"""COCO run-length encoding, through pycocotools.

A COCO RLE is ``{"size": [h, w], "counts": str}``: runs of 0s and 1s over the mask flattened in
column-major (Fortran) order, starting with a (possibly empty) run of 0s, then compressed to a
string (``maskApi.c``). Encoding, decoding, area and box are pycocotools' C code; a box is
``toBbox``'s ``[x, y, w, h]`` with ``x + w`` one past the last column (COCO's convention), the
box every table and export carries. :func:`string_to_counts` reads a counts string's runs:
pycocotools trusts a string to cover its mask, so input that may not is checked with it.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
from pycocotools import mask as coco_mask


class Rle(TypedDict):
    size: list[int]
    counts: str


def string_to_counts(s: str) -> np.ndarray:
    """Run lengths from the COCO counts string (``rleFrString`` in maskApi.c)."""
    cnts: list[int] = []
    p = 0
    data = s.encode("ascii")
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        cnts.append(x)
    return np.asarray(cnts, dtype=np.int64)


def encode(mask: np.ndarray) -> Rle:
    """Encode a 2-D mask (h, w) as a COCO RLE with a string ``counts``."""
    h, w = mask.shape
    if h * w == 0:
        return {"size": [int(h), int(w)], "counts": ""}
    encoded = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=bool).view(np.uint8)))
    return {"size": [int(h), int(w)], "counts": encoded["counts"].decode("ascii")}


def to_pycocotools(rle: Rle | dict[str, Any]) -> dict[str, Any]:
    """The RLE as pycocotools takes it: compressed ``bytes`` counts (list counts are compressed)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        return {"size": [h, w], "counts": counts.encode("ascii")}
    if isinstance(counts, bytes):
        return {"size": [h, w], "counts": counts}
    runs = [int(c) for c in counts]
    if sum(runs) != h * w or min(runs, default=0) < 0:
        raise ValueError(f"RLE counts sum to {sum(runs)}, expected {h * w} for size {[h, w]}")
    return coco_mask.frPyObjects({"size": [h, w], "counts": runs}, h, w)


def decode(rle: Rle | dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (string or list ``counts``) to a boolean (h, w) mask; ValueError when
    the runs do not cover the mask exactly."""
    h, w = (int(v) for v in rle["size"])
    if h * w == 0:
        return np.zeros((h, w), dtype=bool)
    theirs = to_pycocotools(rle)
    mask = coco_mask.decode(theirs)  # refuses runs past the end, not runs that stop short
    if coco_mask.encode(mask)["counts"] != theirs["counts"]:
        # Not the canonical string of what was decoded: valid only when its runs cover the mask.
        runs = string_to_counts(theirs["counts"].decode("ascii"))
        if int(runs.sum()) != h * w:
            raise ValueError(f"RLE counts sum to {int(runs.sum())}, expected {h * w} for size {[h, w]}")
    return np.ascontiguousarray(mask.view(bool))


def area(rle: Rle | dict[str, Any]) -> int:
    return int(coco_mask.area(to_pycocotools(rle)))


def to_bbox(rle: Rle | dict[str, Any]) -> list[float]:
    """The mask's [x, y, w, h] box, pycocotools' ``toBbox`` ([0, 0, 0, 0] for an empty mask)."""
    return [float(v) for v in coco_mask.toBbox(to_pycocotools(rle))]
