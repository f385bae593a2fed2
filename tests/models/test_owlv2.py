"""OWLv2 runner on the tiny model: proposals and text detection in original pixel coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.common.boxes import box_iou, clip_xyxy
from samflow.models.loading.registry import load_model


@pytest.fixture(scope="module")
def owl():
    return load_model("owlv2", "tiny://owlv2", device="cpu")


def assert_inside(boxes: torch.Tensor, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
    assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all())
    assert bool((boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())
    assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())


def test_image_features_batch_equals_single_calls(owl, images):
    batch = owl.image_features(images)
    for i, image in enumerate(images):
        single = owl.image_features([image])
        torch.testing.assert_close(batch.boxes[i], single.boxes[0], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(batch.objectness[i], single.objectness[0], atol=1e-5, rtol=1e-4)


def test_proposals_inside_image_sorted_capped(owl, images):
    proposals = owl.propose(images, max_boxes=7, nms_iou=0.5)
    assert len(proposals) == len(images)
    for (boxes, scores), image in zip(proposals, images):
        assert 0 < len(boxes) <= 7 and scores.shape == (len(boxes),)
        assert_inside(boxes, image)
        assert bool((scores[:-1] >= scores[1:]).all()) and bool(((scores >= 0) & (scores <= 1)).all())
        overlaps = box_iou(boxes, boxes) - torch.eye(len(boxes))
        assert bool((overlaps <= 0.5 + 1e-6).all())  # NMS held


def test_proposals_batch_equals_single_calls(owl, images):
    batch = owl.propose(images, max_boxes=5)
    for (boxes, scores), image in zip(batch, images):
        one_boxes, one_scores = owl.propose([image], max_boxes=5)[0]
        torch.testing.assert_close(boxes, one_boxes, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(scores, one_scores, atol=1e-5, rtol=1e-4)


def test_boxes_are_in_original_pixels(owl, images):
    """OWLv2 pads to a square: an image and its explicitly black-padded square give the same boxes."""
    image = images[0]  # 48 x 80
    square = np.zeros((80, 80, 3), np.uint8)
    square[:48] = image
    a = owl.image_features([image])
    b = owl.image_features([square])
    torch.testing.assert_close(a.boxes[0], clip_xyxy(b.boxes[0], 48, 80), atol=1e-3, rtol=1e-4)
    assert float(b.boxes[0][:, 3].max()) > 48  # the square's frame reaches below the image


def test_detect_queries(owl, images):
    queries = ["a cat", "a dog", "a car"]
    results = owl.detect(images, queries, threshold=0.3, max_boxes=6)
    again = owl.detect(images, queries, threshold=0.3, max_boxes=6)
    for (boxes, scores, labels), (b2, s2, l2), image in zip(results, again, images):
        assert len(boxes) <= 6 and bool((scores >= 0.3).all()) and bool((scores <= 1).all())
        assert labels.dtype == torch.long and set(labels.tolist()) <= {0, 1, 2}
        if len(boxes):
            assert_inside(boxes, image)
        torch.testing.assert_close(boxes, b2)
    with pytest.raises(ValueError):
        owl.detect(images, [])


def test_detect_batch_equals_single_calls(owl, images):
    batch = owl.detect(images, ["a cat", "a dog"], threshold=0.0, max_boxes=4)
    for (boxes, scores, labels), image in zip(batch, images):
        b, s, l = owl.detect([image], ["a cat", "a dog"], threshold=0.0, max_boxes=4)[0]
        torch.testing.assert_close(boxes, b, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(scores, s, atol=1e-5, rtol=1e-4)
        assert torch.equal(labels, l)
