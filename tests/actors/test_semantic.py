"""The semantic stage and the unet family: class regions match a synthetic label map exactly.

The checkpoint is an "identity" classifier (a U-Net of depth 0: a 1x1 conv whose weights copy
channel c to class c), so an image painted in one-hot colours has its label map as the known
answer; it is saved as a user checkpoint folder and loaded through the registry like any other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.actors.semantic import SemanticConfig, SemanticStage
from samflow.models.loading.check import check_model
from samflow.models.loading.registry import ModelLoadError, load_model
from samflow.models.unet.runner import UNet, save_checkpoint
from samflow.schemas import masks as mask_column
from samflow.schemas import rle
from tests.helpers.stage_batches import image_batch

CLASSES = ["background", "road", "building"]


@pytest.fixture(scope="module")
def identity_checkpoint(tmp_path_factory):
    model = UNet(num_classes=3, depth=0)
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        model.head.bias.zero_()
    config = {"classes": CLASSES, "input_size": [48, 64], "depth": 0}
    return str(save_checkpoint(model, config, tmp_path_factory.mktemp("ckpt") / "identity"))


def _label_map() -> np.ndarray:
    labels = np.zeros((48, 64), dtype=np.int64)
    labels[5:20, 3:30] = 1          # one road region
    labels[30:44, 10:20] = 1        # a second, separate road region
    labels[8:40, 40:60] = 2         # a building
    labels[12:16, 45:50] = 0        # a hole in it
    return labels


def _paint(labels: np.ndarray) -> np.ndarray:
    return (np.eye(3, dtype=np.uint8)[labels] * 255).astype(np.uint8)




def test_class_regions_match_the_label_map_exactly(identity_checkpoint):
    labels = _label_map()
    stage = SemanticStage(SemanticConfig(model=identity_checkpoint), device="cpu")
    out = stage(image_batch([_paint(labels), _paint(labels)], failed=(1,)))
    records = mask_column.records_at(out["masks"], 0)
    assert sorted(r["label"] for r in records) == ["building", "road"]  # background skipped
    for record in records:
        assert record["source"] == "semantic" and 0 < record["label_score"] <= 1
        mask = rle.decode(record["segmentation"])
        assert np.array_equal(mask, labels == CLASSES.index(record["label"]))
        assert record["area"] == int(mask.sum())
    assert mask_column.records_at(out["masks"], 1) == []


def test_connected_components_split_a_class_into_its_regions(identity_checkpoint):
    labels = _label_map()
    stage = SemanticStage(SemanticConfig(model=identity_checkpoint, connected_components=True, skip_classes=()), device="cpu")
    records = mask_column.records_at(stage(image_batch([_paint(labels)]))["masks"], 0)
    roads = [rle.decode(r["segmentation"]) for r in records if r["label"] == "road"]
    assert len(roads) == 2
    assert np.array_equal(roads[0] | roads[1], labels == 1) and not (roads[0] & roads[1]).any()
    assert sum(r["label"] == "background" for r in records) == 2  # outside, and the hole in the building


def test_upscaled_pixels_give_regions_in_original_coordinates(identity_checkpoint):
    labels = _label_map()
    big = np.repeat(np.repeat(_paint(labels), 2, axis=0), 2, axis=1)
    stage = SemanticStage(SemanticConfig(model=identity_checkpoint, input_size=(96, 128)), device="cpu")
    records = mask_column.records_at(stage(image_batch([big], factor=2))["masks"], 0)
    for record in records:
        assert np.array_equal(rle.decode(record["segmentation"]), labels == CLASSES.index(record["label"]))


def test_batch_equals_single_calls_and_models_check():
    runner = load_model("unet", "tiny://unet", device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 56), (64, 64), (33, 20))]
    together = runner.segment(images)
    for image, (labels, confidence) in zip(images, together):
        alone, alone_conf = runner.segment([image])[0]
        assert labels.shape == image.shape[:2]
        assert (labels != alone).mean() < 1e-3
        np.testing.assert_allclose(confidence, alone_conf, atol=1e-4)
    facts = check_model("tiny://unet")
    assert facts["family"] == "unet" and facts["parameters"] == runner.num_parameters


def test_checkpoint_folder_is_auto_detected_and_class_count_checked(identity_checkpoint):
    assert check_model(identity_checkpoint)["family"] == "unet"
    with pytest.raises(ModelLoadError, match="predicts 3"):
        SemanticStage(SemanticConfig(model=identity_checkpoint, classes=["a", "b"]), device="cpu")
