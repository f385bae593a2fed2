"""The propose stage's detector families in the stage itself (no Ray): Mask R-CNN masks kept as
RLE rows, closed-set class names carried onto the masks they prompt, family auto-detection."""

from __future__ import annotations

import numpy as np
import pytest

from samflow.actors.propose import ProposeConfig, ProposeStage
from samflow.actors.segment import SegmentConfig, SegmentStage
from samflow.models.loading.registry import ModelLoadError, load_model
from samflow.models.detectors.maskrcnn import TINY_CLASSES
from samflow.scenes.sample import synthetic_scene
from samflow.schemas import masks as mask_column
from samflow.schemas import proposals, rle
from tests.helpers.stage_batches import image_batch
from tests.helpers.stages import context


def _scenes(*sizes: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [synthetic_scene(rng, h, w, n_shapes=2)[0] for h, w in sizes]


def _found(batch) -> dict:
    """The first row's proposals as plain lists."""
    boxes, scores = proposals.boxes_at(batch, 0)
    return {"boxes": boxes.tolist(), "scores": scores.tolist(), "labels": proposals.labels_at(batch, 0)}


def test_maskrcnn_masks_become_rle_rows_with_class_names():
    stage = ProposeStage(ProposeConfig(model="tiny://maskrcnn", max_boxes=5, score_thresh=0.0, maskrcnn_masks="rows"))
    assert stage.family == "maskrcnn"  # auto-detected from the URI
    image, other = _scenes((48, 64), (40, 40))
    out = stage(image_batch([image, other, image], failed=(1,)))
    detector = load_model("maskrcnn", "tiny://maskrcnn", device="cpu")
    expected = detector.detect([image], threshold=0.0, max_boxes=5)[0]
    records = mask_column.records_at(out["masks"], 0)
    kept = [i for i, m in enumerate(expected.masks) if m.any()]
    assert len(records) == len(kept) > 0
    for record, i in zip(records, kept):
        assert record["source"] == "maskrcnn"
        assert np.array_equal(rle.decode(record["segmentation"]), expected.masks[i].numpy())  # RLE round trip
        assert record["area"] == int(expected.masks[i].sum())
        assert record["label"] == expected.labels[i] and record["label"] in TINY_CLASSES
        assert record["label_score"] == pytest.approx(float(expected.scores[i]))
    assert mask_column.records_at(out["masks"], 1) == []  # failed row: nothing
    assert _found(out)["boxes"] == []  # rows mode: no prompts for SAM


def test_maskrcnn_rows_of_an_upscaled_image_are_in_original_coordinates():
    (image,) = _scenes((24, 32))
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    stage = ProposeStage(ProposeConfig(model="tiny://maskrcnn", max_boxes=3, score_thresh=0.0, maskrcnn_masks="rows"))
    records = mask_column.records_at(stage(image_batch([big], factor=2))["masks"], 0)
    assert records
    for record in records:
        assert record["segmentation"]["size"] == [24, 32]
        x, y, w, h = record["bbox"]
        assert 0 <= x < x + w <= 32 and 0 <= y < y + h <= 24
        assert record["bbox"] == rle.to_bbox(record["segmentation"])


@pytest.mark.parametrize("family", ["detr", "maskrcnn"])
def test_closed_set_class_names_reach_the_masks_they_prompt(family):
    propose = ProposeStage(ProposeConfig(model=f"tiny://{family}", max_boxes=4, score_thresh=0.0))
    segment = SegmentStage(SegmentConfig(model="tiny://sam"), context({"engine": {"points_per_side": 2, "pred_iou_thresh": 0.0,
                                                  "stability_score_thresh": 0.0}}), device="cpu")
    (image,) = _scenes((48, 64))
    batch = propose(image_batch([image]))
    found = _found(batch)
    assert found["labels"] and set(found["labels"]) <= set(TINY_CLASSES)
    for x0, y0, x1, y1 in found["boxes"]:
        assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 48
    records = mask_column.records_at(segment(batch)["masks"], 0)
    boxed = [r for r in records if r["source"] == "box"]
    assert boxed
    for record in boxed:  # the label of the proposal (same score) that prompted the mask
        prompting = [name for score, name in zip(found["scores"], found["labels"])
                     if abs(score - record["proposal_score"]) < 1e-6]
        assert record["label"] in prompting
        assert record["label_score"] == pytest.approx(record["proposal_score"], abs=1e-6)


def test_segment_keeps_maskrcnn_rows_and_adds_its_own():
    propose = ProposeStage(ProposeConfig(model="tiny://maskrcnn", max_boxes=3, score_thresh=0.0, maskrcnn_masks="rows"))
    segment = SegmentStage(SegmentConfig(model="tiny://sam"), context({"engine": {"points_per_side": 4, "pred_iou_thresh": 0.0,
                                                  "stability_score_thresh": 0.0}}), device="cpu")
    (image,) = _scenes((48, 64))
    batch = propose(image_batch([image]))
    before = mask_column.records_at(batch["masks"], 0)
    after = mask_column.records_at(segment(batch)["masks"], 0)
    assert after[: len(before)] == before and len(after) > len(before)
    assert {r["source"] for r in after[len(before):]} == {"grid"}


def test_a_non_detector_model_is_refused_with_a_clear_error():
    with pytest.raises(ModelLoadError, match="the propose stage takes owlv2 / grounding_dino / detr / maskrcnn models"):
        ProposeStage(ProposeConfig(model="tiny://clip"))


def test_grounding_dino_needs_queries_and_labels_boxes_with_them():
    with pytest.raises(ModelLoadError, match="needs text queries"):
        ProposeStage(ProposeConfig(model="tiny://grounding_dino"))
    stage = ProposeStage(ProposeConfig(model="tiny://grounding_dino", max_boxes=3, score_thresh=0.0, queries=["a cone", "a ball"]))
    (image,) = _scenes((30, 44))
    found = _found(stage(image_batch([image])))
    assert 0 < len(found["boxes"]) <= 3 and set(found["labels"]) <= {"a cone", "a ball"}
