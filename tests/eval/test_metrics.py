"""mask_metrics, the pure function the trainer and the engine round call: figures computed
independently with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from samflow.eval.metrics import best_ious, mask_metrics
from samflow.schemas import rle


def _box(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def test_figures_match_numpy_ious_per_image():
    shape = (30, 40)
    gt = [[_box(shape, 2, 12, 2, 14), _box(shape, 15, 28, 20, 38)], [_box(shape, 0, 10, 0, 10)]]
    pred = [[_box(shape, 2, 12, 5, 17), _box(shape, 0, 30, 0, 40)], []]
    expected = np.array([max(_iou(p, g) for p in pred[0]) for g in gt[0]] + [0.0])
    figures = mask_metrics([[rle.encode(m) for m in image] for image in gt],
                           [[rle.encode(m) for m in image] for image in pred], [[0.9, 0.2], []])
    assert figures["miou"] == pytest.approx(expected.mean())
    assert figures["recall_50"] == pytest.approx((expected >= 0.5).mean())
    assert figures["recall_75"] == pytest.approx((expected >= 0.75).mean())
    assert (figures["images"], figures["gt_masks"], figures["pred_masks"]) == (2, 3, 2)
    assert 0.0 <= figures["mask_ap"] < figures["mask_ap50"] <= 1.0
    np.testing.assert_allclose(best_ious([rle.encode(m) for m in gt[0]], [rle.encode(m) for m in pred[0]]),
                               expected[:2])


def test_per_category_ap_uses_labels_and_crowd_regions_are_not_counted_as_masks():
    shape = (20, 20)
    cat, dog, crowd = _box(shape, 0, 8, 0, 8), _box(shape, 10, 18, 10, 18), _box(shape, 0, 5, 12, 20)
    figures = mask_metrics([[rle.encode(cat), rle.encode(dog), rle.encode(crowd)]],
                           [[rle.encode(cat), rle.encode(dog)]], [[0.8, 0.7]],
                           gt_labels=[["cat", "dog", "dog"]], pred_labels=[["cat", "cat"]],
                           gt_crowd=[[False, False, True]])
    assert figures["gt_masks"] == 2 and figures["miou"] == pytest.approx(1.0)
    assert figures["mask_ap"] == pytest.approx(1.0)  # class-agnostic: both found
    assert figures["per_category"]["cat"]["mask_ap"] == pytest.approx(1.0)
    assert figures["per_category"]["dog"]["mask_ap"] == 0.0  # the dog was called a cat
