"""Map SA-1B mask records from upscaled pixels back to the original image's coordinates.

The upscale stage enlarges an image by an integer factor ``s`` (Real-ESRGAN: 2 or 4), so every
original pixel is exactly an ``s x s`` block of the upscaled image. A mask goes back by block
majority: an original pixel is in the mask when at least half of its block is. Boxes, areas and
point prompts are recomputed or divided accordingly; a mask thinner than half a block vanishes
and its record is dropped (it has no pixel in the original image).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from samflow.schemas import rle


def downscale_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """(h*s, w*s) bool -> (h, w) bool, a pixel set when >= half of its s x s block is."""
    big_h, big_w = mask.shape
    if big_h % factor or big_w % factor:
        raise ValueError(f"mask {mask.shape} is not a multiple of the upscale factor {factor}")
    blocks = np.ascontiguousarray(mask).view(np.uint8).reshape(big_h // factor, factor, big_w // factor, factor)
    # s*s strided adds into a small accumulator: far faster than one sum over two block axes.
    counts = np.zeros((big_h // factor, big_w // factor), dtype=np.uint8 if factor * factor < 256 else np.uint32)
    for i in range(factor):
        for j in range(factor):
            counts += blocks[:, i, :, j]
    return counts.astype(np.uint32) * 2 >= factor * factor


def _scale_xywh(box: list[float], factor: float) -> list[float]:
    return [float(v) / factor for v in box]


def record_to_original(record: dict[str, Any], factor: int) -> dict[str, Any] | None:
    """One record in original coordinates, or None when its mask vanishes at that size."""
    mask = downscale_mask(rle.decode(record["segmentation"]), factor)
    area = int(mask.sum())
    if area == 0:
        return None
    out = dict(record)
    out["segmentation"] = rle.encode(mask)
    out["area"] = area
    out["bbox"] = rle.to_bbox(out["segmentation"])
    out["point_coords"] = [[float(x) / factor, float(y) / factor] for x, y in record.get("point_coords") or []]
    if record.get("crop_box") is not None:
        out["crop_box"] = _scale_xywh(record["crop_box"], factor)
    return out


def records_to_original(records: list[dict[str, Any]], factor: float) -> list[dict[str, Any]]:
    """Every record of one image mapped back from an image upscaled by ``factor`` (a whole
    number); records whose masks vanish are dropped, the order of the others is kept."""
    scale = int(round(factor))
    if scale != factor or scale < 1:
        raise ValueError(f"upscale factor must be a whole number >= 1, got {factor}")
    if scale == 1:
        return records
    mapped = (record_to_original(record, scale) for record in records)
    return [record for record in mapped if record is not None]
