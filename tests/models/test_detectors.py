"""Closed-set detector families (Mask R-CNN, real-time DETR) on tiny models: batches equal single
calls, boxes in the original image's pixels, class names from the checkpoint, safe user
checkpoints, and `models check`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.check import check_model
from samflow.models.maskrcnn import TINY_CLASSES, save_checkpoint
from samflow.models.registry import ModelLoadError, load_model

FAMILIES = ("maskrcnn", "detr")


@pytest.fixture(scope="module", params=FAMILIES)
def detector(request):
    return load_model(request.param, f"tiny://{request.param}", device="cpu")


def _same(a, b) -> None:
    assert a.labels == b.labels
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-4)
    if a.masks is not None:
        assert (a.masks != b.masks).float().mean() < 1e-3


def test_batch_equals_single_calls(detector, images):
    batch = detector.detect(images + [images[0]], threshold=0.0, max_boxes=10)
    assert len(batch) == len(images) + 1
    for image, found in zip(images, batch):
        _same(found, detector.detect([image], threshold=0.0, max_boxes=10)[0])
        assert len(found) > 0


def test_boxes_lie_in_the_original_image_and_carry_checkpoint_class_names(detector, images):
    for image, found in zip(images, detector.detect(images, threshold=0.0, max_boxes=10)):
        height, width = image.shape[:2]
        boxes = found.boxes
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert set(found.labels) <= set(TINY_CLASSES)
        assert torch.all(found.scores[:-1] >= found.scores[1:])  # best first


def test_detr_boxes_match_transformers_post_processing(images):
    """The best box equals what the checkpoints' own post-processing gives for the original size."""
    from transformers import RTDetrImageProcessor

    runner = load_model("detr", "tiny://detr", device="cpu")
    image = images[1]  # 100 x 60: not square, so a swapped or model-frame box would show
    from samflow.models.preprocess import resize_square

    with torch.inference_mode():
        outputs = runner.model(pixel_values=resize_square([image], runner.size, runner.norm, runner.device, runner.dtype))
    reference = RTDetrImageProcessor().post_process_object_detection(
        outputs, threshold=0.0, target_sizes=[image.shape[:2]])[0]
    best = runner.detect([image], threshold=0.0, max_boxes=1)[0]
    torch.testing.assert_close(best.boxes[0], reference["boxes"][0].clamp(min=0), atol=1e-3, rtol=1e-4)
    assert best.labels[0] == runner.classes[int(reference["labels"][0])]


def test_maskrcnn_masks_are_image_sized_and_inside_their_boxes(images):
    runner = load_model("maskrcnn", "tiny://maskrcnn", device="cpu")
    for image, found in zip(images, runner.detect(images, threshold=0.0, max_boxes=10)):
        assert found.masks.shape[1:] == image.shape[:2] and found.masks.dtype == torch.bool
        for mask, (x0, y0, x1, y1) in zip(found.masks, found.boxes.tolist()):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(xs):  # torchvision pastes each mask into its box
                assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) + 1
                assert ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1) + 1


def test_maskrcnn_user_checkpoint_loads_with_its_classes_and_is_auto_detected(tmp_path, images):
    tiny = load_model("maskrcnn", "tiny://maskrcnn", device="cpu")
    tiny.classes = ["apple", "pear", "plum"]
    folder = save_checkpoint(tiny, tmp_path / "fruit", architecture="tiny")
    facts = check_model(str(folder))
    assert facts["family"] == "maskrcnn" and facts["parameters"] == tiny.num_parameters
    loaded = load_model("maskrcnn", str(folder), device="cpu")
    assert loaded.classes == ["apple", "pear", "plum"] and loaded.checkpoint_sha256 == facts["checkpoint_sha256"]
    found = loaded.detect(images[:1], threshold=0.0)[0]
    assert set(found.labels) <= {"apple", "pear", "plum"}
    torch.testing.assert_close(found.boxes, tiny.detect(images[:1], threshold=0.0)[0].boxes)


def test_maskrcnn_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(ModelLoadError, match="pickled code"):
        load_model("maskrcnn", str(path), device="cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_models_check_tiny(family):
    facts = check_model(f"tiny://{family}")
    assert facts["family"] == family and facts["parameters"] > 0 and len(facts["checkpoint_sha256"]) == 64
