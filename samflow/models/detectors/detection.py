"""What every closed-set or open-vocabulary detector returns, and the one way it is trimmed.

    Detections(boxes (N,4) xyxy float32 px of the ORIGINAL image, scores (N,), labels list[str],
               masks (N,H,W) bool or None)

`finish` thresholds, NMS's per class, sorts best first and caps one image's raw outputs, so the
detector families (maskrcnn, detr, grounding_dino) trim the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from samflow.models.common.boxes import batched_nms, box_area, clip_xyxy


@dataclass
class Detections:
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: list[str]
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


def finish(
    boxes: torch.Tensor, scores: torch.Tensor, class_ids: torch.Tensor, names: Sequence[str],
    size: tuple[int, int], threshold: float, nms_iou: float, max_boxes: int,
    masks: torch.Tensor | None = None,
) -> Detections:
    """One image's raw detections (any device) -> kept ones on the CPU, best first."""
    boxes = clip_xyxy(boxes.float(), *size)
    scores = scores.float()
    valid = ((scores >= threshold) & (box_area(boxes) >= 1.0)).nonzero().squeeze(1)
    keep = valid[batched_nms(boxes[valid], scores[valid], class_ids[valid], nms_iou)][:max_boxes]
    ids = class_ids[keep].tolist()
    return Detections(
        boxes[keep].cpu(), scores[keep].cpu(), [class_name(names, i) for i in ids],
        None if masks is None else masks[keep].cpu(),
    )


def class_name(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else f"class_{index}"
