"""COCO run-length encoding, bit-exact with pycocotools.

A COCO RLE is ``{"size": [h, w], "counts": str}``: runs of 0s and 1s over the mask flattened in
column-major (Fortran) order, starting with a (possibly empty) run of 0s, then compressed to a
string with the LEB128-like scheme of ``maskApi.c`` (deltas against the run two back, 5 bits a
character, offset by 48).
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np


class Rle(TypedDict):
    size: list[int]
    counts: str


def mask_to_counts(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a 2-D boolean mask in COCO order (column-major, zeros first)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(edges)
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return runs.astype(np.int64)


def counts_to_string(counts: np.ndarray) -> str:
    """Compress run lengths to the COCO counts string (``rleToString`` in maskApi.c)."""
    out: list[str] = []
    cnts = [int(c) for c in counts]
    for i, value in enumerate(cnts):
        x = value - cnts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_to_counts(s: str) -> np.ndarray:
    """Inverse of :func:`counts_to_string` (``rleFrString`` in maskApi.c)."""
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
    return {"size": [int(h), int(w)], "counts": counts_to_string(mask_to_counts(mask))}


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
