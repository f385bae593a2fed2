"""Synthetic test images."""

from __future__ import annotations

import numpy as np


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """Low-frequency RGB image (resizing it is well behaved, unlike white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(1, 4, size=3)
        channels.append(0.5 + 0.5 * np.sin(a * xx * np.pi + b * yy * np.pi + c))
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)
