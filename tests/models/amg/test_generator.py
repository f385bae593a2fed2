"""MaskGenerator behaviour: batching does not change results, records, parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from samflow.config import EngineConfig, load_config
from samflow.models.amg import AmgParams, MaskGenerator
from samflow.schemas import rle
from tests.helpers.scene_model import SceneOracle, make_scene

SCENES = [
    make_scene(80, 100, [(5, 5, 30, 25), (40, 8, 70, 40), (10, 42, 35, 70), (50, 50, 85, 75)]),
    make_scene(61, 47, [(3, 3, 20, 30), (25, 10, 44, 25), (8, 35, 40, 58)]),
    make_scene(90, 70, [(10, 10, 60, 30), (5, 40, 30, 85), (35, 45, 65, 80)]),
]


def test_params_from_run_config() -> None:
    params = AmgParams(**EngineConfig().model_dump())
    assert (params.points_per_side, params.pred_iou_thresh, params.stability_score_thresh) == (32, 0.88, 0.95)
    assert (params.box_nms_thresh, params.crop_n_layers, params.max_masks_per_image) == (0.7, 0, 0)
    tiny = AmgParams(**load_config(profile="tiny").engine.model_dump())
    assert tiny.points_per_side == 8 and tiny.max_masks_per_image == 16
    config_fields = set(EngineConfig.model_fields)
    assert config_fields <= {f.name for f in dataclasses.fields(AmgParams)}


def test_params_validation() -> None:
    with pytest.raises(ValueError):
        AmgParams(points_per_side=None)
    with pytest.raises(ValueError):
        AmgParams(points_per_side=8, point_grids=[np.zeros((4, 2))])
    with pytest.raises(ValueError):
        AmgParams(points_per_side=None, point_grids=[np.zeros((4, 2))], crop_n_layers=1)


@pytest.mark.parametrize("crop_n_layers", [0, 1])
@pytest.mark.parametrize("crops_per_encode,prompts_per_decode", [(1, 16), (3, 64), (16, 1024)])
def test_batching_does_not_change_results(crop_n_layers: int, crops_per_encode: int, prompts_per_decode: int) -> None:
    base = AmgParams(points_per_side=8, points_per_batch=16, crop_n_layers=crop_n_layers, crops_per_encode=1,
                     prompts_per_decode=16)
    one_by_one = [MaskGenerator(SceneOracle(), base).generate([im])[0] for im in SCENES]
    batched_params = dataclasses.replace(base, crops_per_encode=crops_per_encode, prompts_per_decode=prompts_per_decode)
    oracle = SceneOracle()
    assert MaskGenerator(oracle, batched_params).generate(SCENES) == one_by_one
    if prompts_per_decode >= 64:  # several crops shared decoder calls
        assert max(b for b, _ in oracle.decode_calls) > 1


def test_records_are_sa1b_rows() -> None:
    records = MaskGenerator(SceneOracle(), AmgParams(points_per_side=8)).generate(SCENES[:2])
    assert [len(r) for r in records] == [4, 3]
    for image, per_image in zip(SCENES, records):
        h, w = image.shape[:2]
        ious = [r["predicted_iou"] for r in per_image]
        assert ious == sorted(ious, reverse=True)
        for r in per_image:
            assert set(r) == {"segmentation", "bbox", "area", "predicted_iou", "stability_score", "point_coords",
                              "crop_box", "source", "proposal_score"}
            assert r["segmentation"]["size"] == [h, w] and isinstance(r["segmentation"]["counts"], str)
            mask = rle.decode(r["segmentation"])
            assert r["area"] == int(mask.sum()) == rle.area(r["segmentation"])
            ys, xs = np.nonzero(mask)
            assert r["bbox"] == rle.to_bbox(r["segmentation"])  # COCO's box: x + w one past the last column
            assert r["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert r["crop_box"] == [0.0, 0.0, float(w), float(h)]
            (px, py), = r["point_coords"]
            assert mask[int(py), int(px)]
            assert r["source"] == "grid" and r["proposal_score"] is None
            assert all(isinstance(v, float) for v in r["bbox"] + [r["predicted_iou"], r["stability_score"]])


def test_max_masks_per_image_keeps_best() -> None:
    params = AmgParams(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    everything = MaskGenerator(SceneOracle(), params).generate(SCENES[:1])[0]
    capped = MaskGenerator(SceneOracle(), dataclasses.replace(params, max_masks_per_image=3)).generate(SCENES[:1])[0]
    assert capped == everything[:3]
    assert len(everything) > 3


def test_custom_point_grids() -> None:
    grid = np.array([[0.1, 0.1], [0.5, 0.3], [0.3, 0.7]])  # inside objects 0, 1 and 2
    params = AmgParams(points_per_side=None, point_grids=[grid])
    records = MaskGenerator(SceneOracle(), params).generate(SCENES[:1])[0]
    assert sorted(tuple(r["point_coords"][0]) for r in records) == sorted((x * 100, y * 80) for x, y in grid)


def test_rejects_bad_images() -> None:
    gen = MaskGenerator(SceneOracle(), AmgParams(points_per_side=4))
    with pytest.raises(ValueError):
        gen.generate([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError):
        gen.generate([np.zeros((10, 10, 3), np.float32)])


def test_batched_tiny_sam_matches_one_call_per_crop() -> None:
    """Batching images and crops through one encoder/decoder call moves model outputs by float
    noise only (batched matmuls round differently): same masks, scores within 1e-4."""
    from samflow.models.loading.registry import load_model

    runner = load_model("sam", "tiny://sam")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(40, 56), (64, 48), (50, 50)]]
    base = AmgParams(points_per_side=6, crop_n_layers=1, crop_overlap_ratio=0.5, pred_iou_thresh=0.0,
                     stability_score_thresh=0.0, box_nms_thresh=1.0, points_per_batch=16, crops_per_encode=1,
                     prompts_per_decode=16)
    sequential = [MaskGenerator(runner, base).generate([im])[0] for im in images]
    batched = MaskGenerator(runner, dataclasses.replace(base, crops_per_encode=15, prompts_per_decode=4096)).generate(images)
    for seq, bat in zip(sequential, batched):
        assert len(seq) == len(bat) > 0
        key = lambda r: (r["crop_box"], r["point_coords"], round(r["predicted_iou"], 3))  # noqa: E731
        for a, b in zip(sorted(seq, key=key), sorted(bat, key=key)):
            assert a["crop_box"] == b["crop_box"] and a["point_coords"] == b["point_coords"]
            assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-4
            assert abs(a["stability_score"] - b["stability_score"]) < 1e-3
            ma, mb = rle.decode(a["segmentation"]), rle.decode(b["segmentation"])
            assert (ma & mb).sum() >= 0.98 * (ma | mb).sum()


def test_empty_inputs_and_no_survivors() -> None:
    gen = MaskGenerator(SceneOracle(), AmgParams(points_per_side=4))
    assert gen.generate([]) == []
    strict = MaskGenerator(SceneOracle(), AmgParams(points_per_side=4, pred_iou_thresh=0.99))
    assert strict.generate(SCENES[:2]) == [[], []]
    with pytest.raises(ValueError):
        gen.generate(SCENES[:2], boxes=[None])
