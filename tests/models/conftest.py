"""Shared fixtures for the models tests: small random RGB images of mixed sizes, tiny runners."""

from __future__ import annotations

import numpy as np
import pytest

from samflow.models.registry import load_model


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """Low-frequency RGB image (resizing it is well behaved, unlike white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(1, 4, size=3)
        channels.append(0.5 + 0.5 * np.sin(a * xx * np.pi + b * yy * np.pi + c))
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    """Four images, three distinct sizes (portrait, landscape, square)."""
    return [smooth_image(48, 80, 0), smooth_image(100, 60, 1), smooth_image(48, 80, 2), smooth_image(40, 40, 3)]


@pytest.fixture(scope="session")
def sam_runner():
    return load_model("sam", "tiny://sam", device="cpu")


@pytest.fixture(scope="session", params=["clip", "siglip"])
def clip_runner(request):
    return load_model(request.param, f"tiny://{request.param}", device="cpu")
