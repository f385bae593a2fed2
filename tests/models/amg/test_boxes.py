"""Box ops: tight boxes, greedy NMS against a plain loop, crop-edge test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pycocotools import mask as coco_mask

from samflow.models.amg.boxes import MAX_NMS_ROUNDS, coco_xywh, masks_to_boxes, near_crop_edge, nms
from tests.helpers import reference_amg as ref


def test_masks_to_boxes_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 21, 34), dtype=bool)
    for m in masks[:5]:
        y0, x0 = rng.integers(0, 15), rng.integers(0, 25)
        m[y0 : y0 + rng.integers(1, 6), x0 : x0 + rng.integers(1, 9)] = rng.random() < 0.9
        m[rng.integers(0, 21), rng.integers(0, 34)] = True
    boxes = masks_to_boxes(torch.from_numpy(masks))
    assert boxes.tolist() == [ref.tight_box(m) for m in masks]
    assert boxes[5].tolist() == [0, 0, 0, 0]


def test_record_boxes_are_pycocotools_to_bbox() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((8, 13, 17)) < rng.random((8, 1, 1)) * 0.2
    masks[0] = False
    masks[1] = False
    masks[1, 0, 0] = True  # one pixel at the origin: SAM's box is the empty mask's, toBbox's is not
    masks[2] = True
    tensor = torch.from_numpy(masks)
    areas = tensor.flatten(1).sum(1)
    got = coco_xywh(masks_to_boxes(tensor), areas).tolist()
    encoded = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert got == coco_mask.toBbox(encoded).tolist()
    assert got[:3] == [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 17, 13]]


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, protected=None) -> list[int]:
    records = [{"box": b.tolist(), "score": float(np.float32(s)), "protected": bool(p), "index": i}
               for i, (b, s, p) in enumerate(zip(boxes, scores, protected if protected is not None else [False] * len(boxes)))]
    return [r["index"] for r in ref.greedy_nms(records, "score", threshold, protected_key="protected")]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_nms_equals_greedy_loop(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    n = 150
    xy = rng.integers(0, 100, size=(n, 2))
    wh = rng.integers(0, 40, size=(n, 2))  # includes degenerate (zero-area) boxes
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.integers(0, 20, size=n).astype(np.float32) / 20  # many ties
    kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
    assert kept.tolist() == reference_nms(boxes, scores, threshold)
    protected = rng.random(n) < 0.1
    kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold, protected=torch.from_numpy(protected))
    assert kept.tolist() == reference_nms(boxes, scores, threshold, protected)


@pytest.mark.parametrize("length", [10, 3 * MAX_NMS_ROUNDS])
def test_nms_long_suppression_chain(length: int) -> None:
    # each box suppresses only the next: greedy keeps every other one; the longer chain outlasts
    # the device rounds and is finished on the host
    boxes = torch.tensor([[i, 0, i + 10, 10] for i in range(length)], dtype=torch.float32)
    scores = torch.linspace(1, 0, length)
    kept = nms(boxes, scores, 0.8)  # neighbours overlap by 9/11, next-but-one by 8/12
    assert kept.tolist() == reference_nms(boxes.numpy(), scores.numpy(), 0.8) == list(range(0, length, 2))


def test_near_crop_edge() -> None:
    crop = [100, 50, 300, 250]
    boxes = torch.tensor([
        [50, 50, 100, 100],   # in crop frame: x1 = 200, far from crop x1 = 300 -> inside
        [0, 60, 30, 90],      # x0 = 100 is the crop's left edge, not the image's -> edge
        [60, 0, 90, 30],      # y0 = 50: crop top edge, not the image's -> edge
        [150, 150, 199, 199], # x1 = 299, y1 = 249 near crop right/bottom which are image edges
    ])
    assert near_crop_edge(boxes, crop, (300, 250)).tolist() == [False, True, True, False]

