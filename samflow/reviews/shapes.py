"""Label Studio regions (brush RLE, polygon, rectangle) as masks of the image's size.

Brush RLE decodes with label-studio-sdk (RGBA bytes; a pixel is in the mask where its alpha is
set). Polygons and rectangles are in percent of the image; they are rasterised with pycocotools,
COCO's own convention, so a polygon imported here and one in a COCO file give the same mask.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from samflow.schemas import rle
from samflow.schemas.rle import Rle

BRUSH = "brushlabels"
POLYGON = "polygonlabels"
RECTANGLE = "rectanglelabels"
KINDS = (BRUSH, POLYGON, RECTANGLE)


class RegionError(ValueError):
    """A region that cannot become a mask (its message says why)."""


def region_rle(region: dict[str, Any], height: int, width: int) -> Rle:
    """The region's mask as a COCO RLE of (height, width)."""
    kind = region.get("type")
    value = region.get("value") or {}
    if kind == BRUSH:
        return rle.encode(brush_mask(value, height, width))
    if kind == POLYGON:
        points = [(float(x) * width / 100.0, float(y) * height / 100.0) for x, y in value.get("points") or []]
        return polygon_rle(points, height, width)
    if kind == RECTANGLE:
        return polygon_rle(_rectangle_corners(value, height, width), height, width)
    raise RegionError(f"region type {kind!r} is not one of {', '.join(KINDS)}")


def brush_mask(value: dict[str, Any], height: int, width: int) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        raise RegionError("brush region without an 'rle' list")
    try:
        pixels = np.asarray(decode_rle(value["rle"]), dtype=np.uint8)
    except (IndexError, ValueError) as exc:
        raise RegionError(f"brush RLE does not decode: {exc}") from exc
    if pixels.size != height * width * 4:
        raise RegionError(f"brush RLE holds {pixels.size // 4} pixels, the image {height}x{width} has {height * width}")
    return pixels.reshape(height, width, 4)[:, :, 3] > 0


def polygon_rle(points: list[tuple[float, float]], height: int, width: int) -> Rle:
    if len(points) < 3:
        raise RegionError(f"a polygon needs 3 points, this one has {len(points)}")
    flat = [coordinate for point in points for coordinate in point]
    if not all(math.isfinite(v) for v in flat):
        raise RegionError("polygon point is not a finite number")
    encoded = coco_mask.merge(coco_mask.frPyObjects([flat], height, width))
    return {"size": [height, width], "counts": encoded["counts"].decode("ascii")}


def _rectangle_corners(value: dict[str, Any], height: int, width: int) -> list[tuple[float, float]]:
    """Corners in pixels; Label Studio rotates a rectangle about its top-left corner."""
    try:
        x, y = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
        w, h = float(value["width"]) * width / 100.0, float(value["height"]) * height / 100.0
    except (KeyError, TypeError, ValueError) as exc:
        raise RegionError(f"rectangle without x, y, width and height: {exc}") from exc
    angle = math.radians(float(value.get("rotation") or 0.0))
    cos, sin = math.cos(angle), math.sin(angle)
    return [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
