"""Stability score, connected components and small-region removal against plain references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import label as skimage_label

from samflow.models.amg.filters import (
    connected_components,
    remove_small_regions,
    stability_score,
)
from tests.helpers import reference_amg as ref


def test_stability_score_is_iou_of_offset_thresholds() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(5, 17, 23)).astype(np.float32)
    score = stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy()
    for s, l in zip(score, logits):
        high, low = l > 1.0, l > -1.0
        assert s == np.float32((high & low).sum()) / np.float32((high | low).sum())


def blobs(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    masks = []
    for _ in range(n):
        m = rng.random((h, w)) < rng.uniform(0.2, 0.7)
        masks.append(m)
    return np.stack(masks + [np.zeros((h, w), bool), np.ones((h, w), bool)])


@pytest.mark.parametrize("seed", [0, 1])
def test_components_match_skimage(seed: int) -> None:
    masks = blobs(np.random.default_rng(seed), 4, 23, 31)
    labels = connected_components(torch.from_numpy(masks)).numpy()
    for m, lab in zip(masks, labels):
        expected = skimage_label(m, connectivity=2)
        assert np.array_equal(lab >= 0, m)
        # same partition, and each label is the raster index of its component's first pixel
        assert len(set(zip(lab[m].tolist(), expected[m].tolist()))) == expected.max()
        for value in np.unique(lab[m]):
            assert np.flatnonzero(lab.ravel() == value)[0] == value


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("area", [3, 15])
def test_remove_small_regions_matches_reference(seed: int, area: int) -> None:
    masks = blobs(np.random.default_rng(seed), 5, 20, 26)
    masks[0] = False
    masks[0, 2:4, 2:4] = True  # only small islands: the largest is kept
    masks[0, 10, 10] = True
    new, changed = remove_small_regions(torch.from_numpy(masks), area)
    for m, n, c in zip(masks, new.numpy(), changed.tolist()):
        expected, holes_changed = ref.remove_regions(m, area, holes=True)
        expected, islands_changed = ref.remove_regions(expected, area, holes=False)
        assert np.array_equal(n, expected)
        assert c == (holes_changed or islands_changed)
