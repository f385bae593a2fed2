"""COCO run-length encoding, bit-exact with pycocotools.

A COCO RLE is ``{"size": [h, w], "counts": str}``: runs of 0s and 1s over the mask flattened in
column-major (Fortran) order, starting with a (possibly empty) run of 0s, then compressed to a
string with the LEB128-like scheme of ``maskApi.c`` (deltas against the run two back, 5 bits a
character, offset by 48).

Encoding, area and box go through pycocotools' C code; decoding checks that the runs cover the
mask exactly first (pycocotools trusts the counts and would write past its buffer), so it reads
the counts here.
"""

from __future__ import annotations

from typing import TypedDict

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


def decode(rle: Rle) -> np.ndarray:
    """Decode a COCO RLE (string or list ``counts``) to a boolean (h, w) mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = string_to_counts(counts) if isinstance(counts, str) else np.asarray(counts, np.int64)
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE counts sum to {int(runs.sum())}, expected {h * w} for size {[h, w]}")
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T.copy()


def area(rle: Rle) -> int:
    counts = rle["counts"]
    runs = string_to_counts(counts) if isinstance(counts, str) else np.asarray(counts, np.int64)
    return int(runs[1::2].sum())


def to_bbox(rle: Rle) -> list[float]:
    """Tight [x, y, w, h] box of the mask, as pycocotools' ``toBbox``."""
    mask = decode(rle)
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = float(xs.min()), float(ys.min())
    return [x0, y0, float(xs.max()) - x0 + 1.0, float(ys.max()) - y0 + 1.0]
