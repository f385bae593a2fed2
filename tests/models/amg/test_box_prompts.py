"""Box prompts from proposals: one mask per proposal, grid masks only where boxes did not cover."""

from __future__ import annotations

import numpy as np

from samflow.models.amg import AmgParams, MaskGenerator
from samflow.models.amg.grid import point_grid
from samflow.schemas import rle
from tests.helpers.scene_model import SceneOracle, color_labels, make_scene

OBJECTS = [(5, 5, 30, 25), (40, 8, 70, 40), (10, 42, 35, 70), (50, 50, 85, 75), (72, 2, 95, 20)]
H, W = 80, 100


def object_masks(image: np.ndarray) -> list[np.ndarray]:
    labels = color_labels(image)
    return [labels == labels[y0, x0] for x0, y0, _, _ in OBJECTS]


def test_one_mask_per_proposal_and_grid_only_where_uncovered() -> None:
    image = make_scene(H, W, OBJECTS)
    truth = object_masks(image)
    proposals = np.array([[4, 4, 31, 26], [39, 7, 71, 41]], dtype=np.float64)  # objects 0 and 1
    scores = np.array([0.9, 0.6], dtype=np.float32)
    oracle = SceneOracle()
    params = AmgParams(points_per_side=10, points_per_batch=16)
    records = MaskGenerator(oracle, params).generate([image], boxes=[proposals], box_scores=[scores])[0]

    box_records = [r for r in records if r["source"] == "box"]
    grid_records = [r for r in records if r["source"] == "grid"]
    assert len(box_records) == len(proposals)
    for r, obj, score in zip(sorted(box_records, key=lambda r: -r["proposal_score"]), (0, 1), scores):
        assert np.array_equal(rle.decode(r["segmentation"]), truth[obj])
        assert r["proposal_score"] == float(score) and r["point_coords"] == []
    covered = truth[0] | truth[1]
    decoded_masks = [rle.decode(r["segmentation"]) for r in grid_records]
    # the grid found exactly the three objects no proposal covered, each once
    assert sorted(int(m.sum()) for m in decoded_masks) == sorted(int(truth[i].sum()) for i in (2, 3, 4))
    for m in decoded_masks:
        assert any(np.array_equal(m, truth[i]) for i in (2, 3, 4))
        assert not (m & covered).any()
    for r in grid_records:
        (x, y), = r["point_coords"]
        assert not covered[int(y), int(x)]
    # grid points on covered pixels were never decoded
    grid_xy = point_grid(10) * np.array([W, H])
    uncovered = sum(not covered[int(y), int(x)] for x, y in grid_xy)
    decoded_points = sum(b * n for b, n in oracle.decode_calls) - len(proposals)
    assert decoded_points == uncovered < len(grid_xy)


def test_unconfident_box_mask_does_not_block_the_grid() -> None:
    image = make_scene(H, W, OBJECTS)
    truth = object_masks(image)
    background_box = np.array([[0, 72, 8, 79]], dtype=np.float64)  # no object inside
    params = AmgParams(points_per_side=10)
    with_box = MaskGenerator(SceneOracle(), params).generate([image], boxes=[background_box])[0]
    without = MaskGenerator(SceneOracle(), params).generate([image])[0]
    assert [r["source"] for r in with_box].count("box") == 1
    assert with_box[-1]["source"] == "box" and with_box[-1]["proposal_score"] is None  # lowest IoU last
    assert [r for r in with_box if r["source"] == "grid"] == without
    assert len(without) == len(truth)


def test_images_without_proposals_use_the_grid() -> None:
    image = make_scene(H, W, OBJECTS)
    params = AmgParams(points_per_side=10)
    gen = MaskGenerator(SceneOracle(), params)
    plain = gen.generate([image])[0]
    out = gen.generate([image, image, image], boxes=[None, np.zeros((0, 4)), np.array([[4, 4, 31, 26]])])
    assert out[0] == plain and out[1] == plain
    assert [r["source"] for r in out[2]].count("box") == 1 and len(out[2]) == len(plain)
