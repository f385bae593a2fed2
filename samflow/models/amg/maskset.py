"""Masks of one image: COCO compressed counts plus one tensor row per mask on the device."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class MaskSet:
    """Per-mask tensors (first dimension M) for masks in the original image frame.

    ``boxes`` are xyxy with inclusive max (SAM's convention), ``points`` the (x, y) prompt (NaN
    for box prompts), ``crop_boxes`` xyxy, ``proposal_scores`` NaN when there is none.
    """

    counts: list[str]  # COCO compressed counts (rle_torch.encode)
    areas: torch.Tensor  # (M,) int64
    boxes: torch.Tensor  # (M, 4) int64
    iou_preds: torch.Tensor  # (M,) float32
    stability: torch.Tensor  # (M,) float32
    points: torch.Tensor  # (M, 2) float64
    crop_boxes: torch.Tensor  # (M, 4) int64
    from_box: torch.Tensor  # (M,) bool
    proposal_scores: torch.Tensor  # (M,) float32

    def __len__(self) -> int:
        return len(self.counts)

    @classmethod
    def empty(cls, device: torch.device | str) -> "MaskSet":
        def z(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(
            counts=[], areas=z(0, dtype=torch.int64), boxes=z(0, 4, dtype=torch.int64),
            iou_preds=z(0, dtype=torch.float32), stability=z(0, dtype=torch.float32),
            points=z(0, 2, dtype=torch.float64), crop_boxes=z(0, 4, dtype=torch.int64),
            from_box=z(0, dtype=torch.bool), proposal_scores=z(0, dtype=torch.float32),
        )

    def select(self, idx: torch.Tensor) -> "MaskSet":
        """Masks ``idx`` (indices or bool), in that order."""
        if idx.dtype == torch.bool:
            idx = idx.nonzero(as_tuple=True)[0]
        rows = {f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "counts"}
        return MaskSet(counts=[self.counts[i] for i in idx.tolist()], **rows)

    @staticmethod
    def cat(parts: list["MaskSet"]) -> "MaskSet":
        if len(parts) == 1:
            return parts[0]
        rows = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(MaskSet) if f.name != "counts"}
        return MaskSet(counts=[c for p in parts for c in p.counts], **rows)
