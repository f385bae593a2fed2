"""Point grids and crop boxes follow SAM's layout."""

from __future__ import annotations

import numpy as np
import pytest

from samflow.models.amg.grid import crop_boxes, layer_point_grids, point_grid
from tests.helpers import reference_amg as ref


@pytest.mark.parametrize("n", [1, 4, 7, 32])
def test_point_grid(n: int) -> None:
    assert np.array_equal(point_grid(n), ref.grid(n))
    assert np.allclose(point_grid(n)[: n + 1], [[(i % n + 0.5) / n, (i // n + 0.5) / n] for i in range(n + 1)][: n * n])


def test_layer_grids_downscale() -> None:
    assert [len(g) for g in layer_point_grids(32, 2, 2)] == [32 * 32, 16 * 16, 8 * 8]
    assert [len(g) for g in layer_point_grids(2, 2, 4)] == [4, 0, 0]  # deep layers can run out


@pytest.mark.parametrize("hw", [(480, 640), (1500, 2250), (97, 53)])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_crop_boxes(hw: tuple[int, int], layers: int) -> None:
    boxes, layer_of = crop_boxes(hw, layers, 512 / 1500)
    expected = ref.crop_boxes(*hw, layers, 512 / 1500)
    assert boxes == [b for b, _ in expected]
    assert layer_of == [layer for _, layer in expected]
    h, w = hw
    assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in boxes)
