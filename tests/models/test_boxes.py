"""Detection box helpers: conversion, clipping, grouped NMS (hand-worked cases)."""

from __future__ import annotations

import torch

from samflow.models.common.boxes import batched_nms, box_iou, clip_xyxy, cxcywh_to_xyxy, nms


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [20.0, 20, 30, 30]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1.0, 50 / 150, 0.0]]))


def test_cxcywh_to_xyxy():
    torch.testing.assert_close(cxcywh_to_xyxy(torch.tensor([[5.0, 5, 4, 2]])), torch.tensor([[3.0, 4, 7, 6]]))


def test_nms_suppresses_overlaps_keeps_order():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [20.0, 20, 30, 30], [0.0, 0, 10, 9]])
    scores = torch.tensor([0.8, 0.9, 0.5, 0.7])
    # box 1 (0.9) suppresses 0 (IoU 0.68) and 3; box 2 is apart
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    # a suppressed box does not suppress others: with a high threshold all survive
    assert nms(boxes, scores, 0.95).tolist() == [1, 0, 3, 2]


def test_batched_nms_never_suppresses_across_groups():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8])
    assert batched_nms(boxes, scores, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, torch.tensor([0, 0]), 0.5).tolist() == [0]


def test_clip_xyxy_to_image():
    boxes = torch.tensor([[-5.0, 3, 90, 60], [10.0, -1, 20, 5]])
    torch.testing.assert_close(clip_xyxy(boxes, 48, 80), torch.tensor([[0.0, 3, 80, 48], [10.0, 0, 20, 5]]))
