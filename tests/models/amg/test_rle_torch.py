"""The engine's RLE (samflow.models.amg.rle_torch): the GPU path (tensor run lengths) is
bit-exact with pycocotools' encoder; encode / decode round-trip masks in either memory order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from samflow.models.amg import rle_torch
from samflow.schemas import rle as schema_rle


def coco_counts(mask: np.ndarray) -> str:
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Mixed densities plus blobby masks (long runs, so multi-character and negative deltas)."""
    masks = [rng.random((h, w)) < rng.random() for _ in range(n)]
    yy, xx = np.mgrid[:h, :w]
    for _ in range(n):
        cy, cx, r = rng.random() * h, rng.random() * w, rng.random() * max(h, w) / 2
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
    return np.stack(masks)


SIZES = [(1, 1), (1, 17), (23, 1), (2, 2), (7, 13), (31, 47), (64, 64), (129, 77)]


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_strings_match_pycocotools(h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = np.concatenate([random_masks(rng, 6, h, w), np.zeros((1, h, w), bool), np.ones((1, h, w), bool)])
    runs, lengths = rle_torch.masks_to_runs(torch.from_numpy(masks))
    assert rle_torch.runs_to_strings(runs, lengths) == [coco_counts(m) for m in masks]


def test_large_mask_counts_need_many_characters() -> None:
    h, w = 1500, 2250  # a full-size SA-1B image: counts up to 3.4M need 5+ characters
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[1] = True
    masks[2, 700:1400, 5:2000] = True
    masks[2, 0, 0] = True
    runs, lengths = rle_torch.masks_to_runs(masks)
    assert rle_torch.runs_to_strings(runs, lengths) == [coco_counts(m) for m in masks.numpy()]


def test_runs_areas_match_the_masks() -> None:
    rng = np.random.default_rng(3)
    masks = np.concatenate([random_masks(rng, 5, 19, 28), np.zeros((1, 19, 28), bool), np.ones((1, 19, 28), bool)])
    runs, lengths = rle_torch.masks_to_runs(torch.from_numpy(masks))
    assert rle_torch.areas(runs, lengths).tolist() == [int(m.sum()) for m in masks]


@pytest.mark.parametrize("order", ["row-major", "column-major"])
def test_encode_decode_round_trip(order: str) -> None:
    """encode gives pycocotools' strings and the areas, for masks in either memory order (the
    upsampler's are column-major); decode gives the masks back; the schema module reads them."""
    rng = np.random.default_rng(4)
    masks = np.concatenate([random_masks(rng, 5, 19, 28), np.zeros((1, 19, 28), bool), np.ones((1, 19, 28), bool)])
    tensor = torch.from_numpy(masks)
    if order == "column-major":
        tensor = tensor.transpose(1, 2).contiguous().transpose(1, 2)
    counts, areas = rle_torch.encode(tensor)
    assert counts == [coco_counts(m) for m in masks]
    assert areas.tolist() == [int(m.sum()) for m in masks]
    assert np.array_equal(rle_torch.decode(counts, 19, 28, "cpu").numpy(), masks)
    for i, s in enumerate(counts):
        assert np.array_equal(schema_rle.decode({"size": [19, 28], "counts": s}), masks[i])


def test_no_masks() -> None:
    runs, lengths = rle_torch.masks_to_runs(torch.zeros(0, 5, 6, dtype=torch.bool))
    assert rle_torch.runs_to_strings(runs, lengths) == []
    assert rle_torch.areas(runs, lengths).tolist() == []
    counts, areas = rle_torch.encode(torch.zeros(0, 5, 6, dtype=torch.bool))
    assert counts == [] and areas.tolist() == []
    assert rle_torch.decode([], 5, 6, "cpu").shape == (0, 5, 6)


def test_without_pycocotools_the_cpu_encoder_gives_the_same_strings_and_areas(monkeypatch) -> None:
    masks = torch.from_numpy(random_masks(np.random.default_rng(3), 4, 31, 47))
    expected = rle_torch.encode(masks)
    monkeypatch.setattr(rle_torch, "_pycocotools", lambda: None)  # a bare GPU machine's CPU
    strings, areas = rle_torch.encode(masks)
    assert strings == expected[0] and torch.equal(areas, expected[1])
    assert rle_torch.encode(masks[:0])[0] == []
