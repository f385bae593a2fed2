"""Fidelity: given the same model outputs, the engine keeps the same masks as a slow,
step-by-step reference of SAM's published algorithm (tests/helpers/reference_amg.py), with the
same RLE, boxes and scores, record for record.

The engine runs with ``crops_per_encode=1`` and ``prompts_per_decode=points_per_batch`` so its
model calls are the reference's (one crop per encoder call, one point batch per decoder call);
everything after the model -- filters, NMS, crops, RLE, small regions -- is the engine's own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.amg import AmgParams, MaskGenerator
from tests.helpers import reference_amg as ref
from tests.helpers.scene_model import SceneOracle, make_scene

pytestmark = pytest.mark.fidelity


def same_calls(**kw) -> AmgParams:
    ppb = kw.pop("points_per_batch", 16)
    return AmgParams(points_per_batch=ppb, crops_per_encode=1, prompts_per_decode=ppb, **kw)


def random_scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(60, 110, size=2)
    objects = []
    for _ in range(rng.integers(3, 8)):
        x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
        objects.append((x0, y0, x0 + rng.integers(5, 40), y0 + rng.integers(5, 40)))
    image = make_scene(int(h), int(w), objects)
    holes = rng.integers(0, [w, h], size=(6, 2))
    for x, y in holes:  # small holes and specks for min_mask_region_area
        image[y : y + 2, x : x + 2] = 255 - image[y, x]
    return image


ORACLE_CASES = [
    dict(points_per_side=8),
    dict(points_per_side=12, crop_n_layers=1),
    dict(points_per_side=8, crop_n_layers=2, crop_n_points_downscale_factor=2),
    dict(points_per_side=10, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.5),
    dict(points_per_side=9, crop_n_layers=1, min_mask_region_area=6, pred_iou_thresh=0.0),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", range(len(ORACLE_CASES)))
def test_engine_matches_reference_on_scenes(seed: int, case: int) -> None:
    image = random_scene(seed)
    params = same_calls(**ORACLE_CASES[case])
    expected = ref.generate(SceneOracle(), image, params)
    assert MaskGenerator(SceneOracle(), params).generate([image])[0] == expected
    assert expected  # the case exercises masks, not an empty result


@pytest.mark.parametrize("seed", [0, 1])
def test_box_prompt_path_matches_reference(seed: int) -> None:
    image = random_scene(seed)
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, [w - 20, h - 20], size=(3, 2))
    boxes = np.concatenate([xy, xy + rng.integers(8, 20, size=(3, 2))], axis=1).astype(np.float64)
    scores = rng.random(3).astype(np.float32)
    params = same_calls(points_per_side=8, crop_n_layers=1, min_mask_region_area=5)
    expected = ref.generate(SceneOracle(), image, params, boxes, scores)
    got = MaskGenerator(SceneOracle(), params).generate([image], boxes=[boxes], box_scores=[scores])[0]
    assert got == expected
    assert sum(r["source"] == "box" for r in got) == 3


# -- tiny SAM (random weights, real architecture and runner) -----------------------------------

SAM_CASES = [
    dict(points_per_side=5, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    dict(points_per_side=6, pred_iou_thresh=0.1, stability_score_thresh=0.2, stability_score_offset=0.02,
         box_nms_thresh=0.99),
    dict(points_per_side=5, crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
         crop_overlap_ratio=0.5),
    dict(points_per_side=4, crop_n_layers=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
         crop_nms_thresh=0.9, crop_overlap_ratio=0.6, min_mask_region_area=8),
]


def sam_with_seed(runner, seed: int):
    """Scales the tiny model's weights by seeded noise: a different random model per seed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in runner.model.parameters():
            p.mul_(1 + 0.5 * torch.randn(p.shape, generator=generator))
    return runner


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", range(len(SAM_CASES)))
def test_engine_matches_reference_on_tiny_sam(seed: int, case: int) -> None:
    from samflow.models.loading.registry import load_model

    runner = sam_with_seed(load_model("sam", "tiny://sam"), seed)
    rng = np.random.default_rng(seed)
    h, w = [(40, 56), (64, 48), (33, 71)][seed]
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    params = same_calls(**SAM_CASES[case])
    expected = ref.generate(runner, image, params)
    assert MaskGenerator(runner, params).generate([image])[0] == expected
    assert expected
