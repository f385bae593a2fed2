"""Point grids and crop boxes, as in SAM's automatic mask generator."""

from __future__ import annotations

import itertools
import math

import numpy as np


def point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points (x, y) in [0, 1], cell centres of an n x n grid, row by row (none for
    n = 0, which deep crop layers reach with a large downscale factor)."""
    if n_per_side <= 0:
        return np.zeros((0, 2), dtype=np.float64)
    half_cell = 1.0 / (2 * n_per_side)
    axis = np.linspace(half_cell, 1.0 - half_cell, n_per_side)
    xs, ys = np.meshgrid(axis, axis, indexing="xy")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``int(n_per_side / downscale**i)`` points a side."""
    return [point_grid(int(n_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(
    image_hw: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (x0, y0, x1, y1) and their layer: the whole image, then (2**i)**2 crops for
    layer i, overlapping by a fraction of the short side that halves with each layer."""
    im_h, im_w = image_hw
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    short_side = min(im_h, im_w)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = _crop_length(im_w, per_side, overlap)
        crop_h = _crop_length(im_h, per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        # x-major order (all y for the first x, ...), the order SAM visits crops in.
        for x0, y0 in itertools.product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes, layers


def _crop_length(full: int, n_crops: int, overlap: int) -> int:
    return int(math.ceil((overlap * (n_crops - 1) + full) / n_crops))
