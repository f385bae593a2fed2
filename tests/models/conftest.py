"""Shared fixtures for the models tests: small random RGB images of mixed sizes, tiny runners."""

from __future__ import annotations

import numpy as np
import pytest

from samflow.models.loading.registry import load_model
from tests.helpers.synthetic import smooth_image


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
