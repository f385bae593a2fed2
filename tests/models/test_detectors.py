"""Closed-set detector families (Mask R-CNN, real-time DETR) on tiny models: batches equal single
calls, boxes in the original image's pixels, class names from the checkpoint, safe user
checkpoints, and `models check`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.loading.check import check_model
from samflow.models.loading.registry import ModelLoadError, load_model
from samflow.models.detectors.maskrcnn import TINY_CLASSES, save_checkpoint

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
    from samflow.models.common.preprocess import resize_square

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


# --- Grounding DINO: open vocabulary ------------------------------------------------------------

QUERIES = ["a cat", "traffic cone"]


@pytest.fixture(scope="module")
def grounding():
    return load_model("grounding_dino", "tiny://grounding_dino", device="cpu")


def test_grounding_dino_batch_equals_single_calls_and_labels_are_the_queries(grounding, images):
    batch = grounding.detect(images, QUERIES, threshold=0.0, max_boxes=8)
    for image, found in zip(images, batch):
        _same(found, grounding.detect([image], QUERIES, threshold=0.0, max_boxes=8)[0])
        assert len(found) > 0 and set(found.labels) <= set(QUERIES)
        height, width = image.shape[:2]
        assert (found.boxes[:, 0::2] >= 0).all() and (found.boxes[:, 0::2] <= width).all()
        assert (found.boxes[:, 1::2] >= 0).all() and (found.boxes[:, 1::2] <= height).all()


def test_grounding_dino_boxes_match_transformers_post_processing(grounding, images):
    """Same input size and caption as the checkpoints' own processor, and every kept box is one
    its post-processing reports for the original image size."""
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    from samflow.models.detectors.tiny import TINY_GROUNDING_EDGES

    image = images[1]  # 100 x 60
    short, longest = TINY_GROUNDING_EDGES
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": short, "longest_edge": longest}),
        tokenizer=grounding.tokenizer)
    inputs = processor(images=[image], text=". ".join(QUERIES) + ".", return_tensors="pt")
    assert inputs["input_ids"].tolist() == grounding.caption(QUERIES)[0].tolist()  # same caption tokens
    pixels = grounding.pixels([image])
    assert pixels.shape == inputs["pixel_values"].shape  # same resize rule
    with torch.inference_mode():
        outputs = grounding.model(pixel_values=pixels, input_ids=inputs["input_ids"])
    reference = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[image.shape[:2]])[0]
    ours = grounding.detect([image], QUERIES, threshold=0.0, max_boxes=5, nms_iou=1.0)[0]
    expected = reference["boxes"].clone()
    expected[:, 0::2] = expected[:, 0::2].clamp(0, image.shape[1])
    expected[:, 1::2] = expected[:, 1::2].clamp(0, image.shape[0])
    for box in ours.boxes:
        assert torch.cdist(box[None], expected).min() < 1e-3


def test_grounding_dino_models_check_and_too_long_queries(grounding):
    assert check_model("tiny://grounding_dino")["family"] == "grounding_dino"
    with pytest.raises(ValueError, match="tokens"):
        grounding.detect([np.zeros((32, 32, 3), np.uint8)], ["a very long query about many things"] * 3)


def test_dfine_checkpoint_folder_loads_as_detr_with_its_processor_size(tmp_path, images):
    """A D-FINE folder (config.json model_type d_fine + preprocessor_config.json) is auto-detected
    as the detr family and runs at the processor's input size with its class names."""
    import json

    from transformers import DFineForObjectDetection

    from samflow.models.loading.hf import build_in_code
    from samflow.models.detectors.tiny import tiny_dfine_config

    built = build_in_code(DFineForObjectDetection, tiny_dfine_config(), torch.device("cpu"), torch.float32)
    built.model.save_pretrained(tmp_path / "dfine")
    (tmp_path / "dfine" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 96, "width": 96}, "do_normalize": False}))
    assert check_model(str(tmp_path / "dfine"))["family"] == "detr"
    runner = load_model("detr", str(tmp_path / "dfine"), device="cpu")
    assert type(runner.model).__name__ == "DFineForObjectDetection" and runner.size == (96, 96)
    batch = runner.detect(images, threshold=0.0, max_boxes=5)
    for image, found in zip(images, batch):
        _same(found, runner.detect([image], threshold=0.0, max_boxes=5)[0])
        assert len(found) > 0 and set(found.labels) <= set(TINY_CLASSES)


def test_mm_grounding_dino_loads_into_its_own_class_with_its_learned_weights(tmp_path, images):
    """An MM-Grounding-DINO folder (model_type mm-grounding-dino) keeps its learned bias and
    scaling: it loads as MMGroundingDinoForObjectDetection, and the runner's scores are that
    model's own."""
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    from samflow.models.detectors.tiny import tiny_bert_tokenizer, tiny_grounding_dino_config

    config = MMGroundingDinoConfig(**{k: v for k, v in tiny_grounding_dino_config().to_dict().items()
                                      if k not in ("model_type", "architectures", "transformers_version")})
    torch.manual_seed(0)
    reference = MMGroundingDinoForObjectDetection(config).eval()
    reference.save_pretrained(tmp_path)
    tiny_bert_tokenizer().save_pretrained(tmp_path)
    runner = load_model("auto", str(tmp_path), task="propose", device="cpu")
    assert type(runner.model).__name__ == "MMGroundingDinoForObjectDetection"
    assert len(runner.detect(images[:1], QUERIES, threshold=0.0, max_boxes=5)[0]) > 0
    loaded = runner.model.state_dict()  # every learned tensor, bias and scale included, as saved
    assert loaded.keys() == reference.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
