"""SAM's training loss: focal plus dice on the mask logits, MSE on the IoU head.

The paper weighs focal to dice 20:1 and the IoU head's MSE at 1; the weights come from
``train.loss`` in the config. Every function returns one value per mask, so callers can pick
the best of the multimask outputs before averaging.
"""

from __future__ import annotations

import torch
from torchvision.ops import sigmoid_focal_loss


def focal_per_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., H, W) logits and 0/1 targets -> (...) mean focal loss over each mask's pixels."""
    return sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="none").mean((-2, -1))


def dice_per_mask(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """(..., H, W) -> (...) soft dice loss, 1 - 2|P∩G| / (|P| + |G|)."""
    probs = logits.sigmoid()
    overlap = (probs * target).sum((-2, -1))
    return 1 - (2 * overlap + smooth) / (probs.sum((-2, -1)) + target.sum((-2, -1)) + smooth)


def mask_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> (...) IoU (1 when both are empty)."""
    inter = (predicted & target).sum((-2, -1)).float()
    union = (predicted | target).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor,
             focal_weight: float, dice_weight: float, iou_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (P, K, H, W), iou_pred (P, K), target (P, H, W) bool -> (loss of each mask (P,),
    index of the output that loss came from (P,)).

    With several outputs per prompt (K = 3, an ambiguous prompt) only the one with the lowest
    mask loss is trained (SAM's minimum over outputs); the IoU head learns every output's IoU."""
    wanted = target[:, None].float().expand_as(logits)
    mask_terms = focal_weight * focal_per_mask(logits, wanted) + dice_weight * dice_per_mask(logits, wanted)
    best = mask_terms.argmin(1)
    rows = torch.arange(len(best), device=logits.device)
    actual = mask_iou(logits.detach() > 0, target[:, None].expand_as(logits))
    iou_terms = ((iou_pred - actual) ** 2).mean(1)
    return mask_terms[rows, best] + iou_weight * iou_terms, best
