"""Box helpers for detection outputs.

IoU, area and NMS are torchvision.ops' (re-exported through `samflow.models.amg.boxes`, which
adds NMS with protected boxes for the mask engine); this module adds what detectors need on top:
format conversion, clipping to the image, and NMS within groups (per image / per label).
"""

from __future__ import annotations

import torch
import torchvision.ops as tvops

from samflow.models.amg.boxes import box_area, box_iou, nms

__all__ = ["box_area", "box_iou", "nms", "cxcywh_to_xyxy", "clip_xyxy", "batched_nms"]


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def clip_xyxy(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each group in one call (``torchvision.ops.batched_nms``). Returns kept
    indices by score descending."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return tvops.batched_nms(boxes.float(), scores.float(), groups, iou_threshold)
