"""From decoder outputs of one crop to filtered, RLE-encoded masks (all on the device)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from samflow.models.amg import rle_torch
from samflow.models.amg.boxes import masks_to_boxes, near_crop_edge
from samflow.models.amg.filters import stability_score
from samflow.models.amg.maskset import MaskSet
from samflow.models.amg.params import AmgParams

# (M, 1, h_lr, w_lr) low-res logits -> (M, 1, H_crop, W_crop) logits at the crop's size.
Upsampler = Callable[[torch.Tensor], torch.Tensor]

# Masks upsampled at once on a CPU (see _masks_and_stability).
_CPU_UPSAMPLE_MASKS = 4


def point_masks(
    low_res: torch.Tensor,
    iou_preds: torch.Tensor,
    points: np.ndarray,
    upsample: Upsampler,
    crop_box: list[int],
    image_hw: tuple[int, int],
    params: AmgParams,
) -> MaskSet:
    """Masks of ``n`` point prompts of one crop: ``low_res`` (n, K, h, w), ``iou_preds`` (n, K),
    ``points`` (n, 2) xy in crop pixels. Applies SAM's per-batch filters in SAM's order
    (predicted IoU, stability, crop edge); masks keep point-major, output-minor order."""
    n, k = iou_preds.shape
    device = low_res.device
    iou_flat = iou_preds.reshape(n * k).float()
    keep = torch.arange(n * k, device=device)
    low_res = low_res.reshape(n * k, 1, *low_res.shape[-2:])
    if params.pred_iou_thresh > 0.0:
        keep = keep[iou_flat[keep] > params.pred_iou_thresh]
        low_res = low_res[keep]
    if keep.numel() == 0:  # nothing to upsample (empty batches trip some device kernels)
        return MaskSet.empty(device)
    masks, stability = _masks_and_stability(low_res, upsample, params)
    if params.stability_score_thresh > 0.0:
        stable = stability >= params.stability_score_thresh
        keep, masks, stability = keep[stable], _rows(masks, stable), stability[stable]
    boxes = masks_to_boxes(masks)
    inside = ~near_crop_edge(boxes, crop_box, (image_hw[1], image_hw[0]))
    keep, masks, boxes, stability = keep[inside], _rows(masks, inside), boxes[inside], stability[inside]
    point_xy = torch.as_tensor(points, dtype=torch.float64, device=device)[keep // k]
    return _to_maskset(masks, boxes, iou_flat[keep], stability, point_xy, crop_box, image_hw, from_box=False)


def _masks_and_stability(
    low_res: torch.Tensor, upsample: Upsampler, params: AmgParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 1, h, w) low-res logits -> ((M, H, W) bool masks, in the upsampler's memory order, and
    their (M,) stability scores). On a CPU a few masks at a time: their full-size logits are
    read three times (two stability thresholds, then the mask) while still small, instead of
    streaming all of them from memory three times (at 768x1024, 192 masks' logits are 600 MB)."""
    m = low_res.shape[0]
    step = m if low_res.device.type != "cpu" else _CPU_UPSAMPLE_MASKS
    masks, stability = None, []
    for s in range(0, m, step):
        logits = upsample(low_res[s : s + step])[:, 0]
        stability.append(stability_score(logits, params.mask_threshold, params.stability_score_offset))
        if masks is None:  # all masks in one tensor, in the upsampler's pixel order (RLE reads it as is)
            h, w = logits.shape[-2:]
            column_major = logits.stride(1) < logits.stride(2)
            masks = torch.empty((m, w, h) if column_major else (m, h, w), dtype=torch.bool, device=logits.device)
            masks = masks.transpose(1, 2) if column_major else masks
        torch.gt(logits, params.mask_threshold, out=masks[s : s + step])
    return masks, torch.cat(stability)


def _rows(full_res: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``full_res[chosen]`` (bool ``chosen``), without copying every mask when all are chosen
    (the no-threshold case), and keeping the masks' memory order (column-major from the
    upsampler, which RLE reads without a transposing copy)."""
    if bool(chosen.all()):
        return full_res
    return full_res.transpose(1, 2)[chosen].transpose(1, 2)


def box_masks(
    low_res: torch.Tensor,
    iou_preds: torch.Tensor,
    upsample: Upsampler,
    image_hw: tuple[int, int],
    proposal_scores: torch.Tensor,
    params: AmgParams,
) -> tuple[MaskSet, torch.Tensor]:
    """One mask per box prompt on the whole image (no filter: every proposal keeps its mask).

    Returns the masks and the (H, W) union of the *confident* ones (passing the predicted-IoU
    and stability thresholds): grid points there are not decoded.
    """
    n = iou_preds.shape[0]
    logits = upsample(low_res.reshape(n, 1, *low_res.shape[-2:]))[:, 0]
    stability = stability_score(logits, params.mask_threshold, params.stability_score_offset)
    masks = logits > params.mask_threshold
    del logits
    iou_flat = iou_preds.reshape(n).float()
    confident = torch.ones(n, dtype=torch.bool, device=masks.device)
    if params.pred_iou_thresh > 0.0:  # a threshold <= 0 filters nothing, as for grid masks
        confident &= iou_flat > params.pred_iou_thresh
    if params.stability_score_thresh > 0.0:
        confident &= stability >= params.stability_score_thresh
    coverage = (masks & confident[:, None, None]).any(dim=0)
    boxes = masks_to_boxes(masks)
    points = torch.full((n, 2), float("nan"), dtype=torch.float64, device=masks.device)
    crop = [0, 0, image_hw[1], image_hw[0]]
    out = _to_maskset(masks, boxes, iou_flat, stability, points, crop, image_hw, from_box=True)
    out.proposal_scores = proposal_scores.to(device=masks.device, dtype=torch.float32)
    return out, coverage


def _to_maskset(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    iou_preds: torch.Tensor,
    stability: torch.Tensor,
    points: torch.Tensor,
    crop_box: list[int],
    image_hw: tuple[int, int],
    from_box: bool,
) -> MaskSet:
    """Moves crop-frame masks, boxes and points into the image frame and encodes the masks."""
    device = masks.device
    x0, y0, x1, y1 = crop_box
    m = masks.shape[0]
    if (x0, y0, x1, y1) != (0, 0, image_hw[1], image_hw[0]):
        # column-major, as the upsampler's masks: the encoder reads that order without a copy
        full = torch.zeros(m, image_hw[1], image_hw[0], dtype=torch.bool, device=device).transpose(1, 2)
        full[:, y0:y1, x0:x1] = masks
        masks = full
    counts, areas = rle_torch.encode(masks)
    shift = torch.tensor([x0, y0, x0, y0], device=device)
    return MaskSet(
        counts=counts,
        areas=areas.to(device),
        boxes=boxes + shift,
        iou_preds=iou_preds,
        stability=stability,
        points=points + torch.tensor([x0, y0], dtype=torch.float64, device=device),
        crop_boxes=torch.tensor([crop_box], dtype=torch.int64, device=device).expand(m, 4),
        from_box=torch.full((m,), from_box, dtype=torch.bool, device=device),
        proposal_scores=torch.full((m,), float("nan"), dtype=torch.float32, device=device),
    )
