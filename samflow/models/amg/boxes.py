"""Box ops: boxes of masks, IoU, greedy NMS.

torchvision.ops does the standard work (``box_iou``, ``box_area``, ``nms``: SAM's own generator
calls the same kernels, so results match it exactly, ties included). What torchvision lacks is
kept here: NMS with *protected* boxes (box-prompt masks survive the small-region NMS) and the
crop-edge test. ``masks_to_boxes`` stays ours: it returns SAM's integer boxes and reads the masks
as bytes, several times faster on CPU than torchvision's float version (same values). SAM's boxes
end on the mask's last pixel (NMS and filters use them so, as SAM does); records carry
:func:`coco_xywh`, pycocotools' ``toBbox`` of the mask.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.ops as tvops


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) int64 xyxy with inclusive max (SAM's convention); [0, 0, 0, 0]
    for an empty mask."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    as_bytes = masks.view(torch.uint8)  # amax over bytes is much faster than any() on CPU
    rows = as_bytes.amax(dim=2).bool()  # (N, H)
    cols = as_bytes.amax(dim=1).bool()  # (N, W)
    y0, y1 = _first_last(rows, h)
    x0, x1 = _first_last(cols, w)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return boxes * rows.any(dim=1, keepdim=True)


def coco_xywh(boxes: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """(N, 4) int xyxy with inclusive max (:func:`masks_to_boxes`) and the masks' (N,) areas ->
    (N, 4) float64 COCO [x, y, w, h], ``toBbox``'s box of the same mask ([0, 0, 0, 0] when empty;
    the area tells an empty mask from one pixel at the origin)."""
    nonempty = (areas > 0).unsqueeze(1).to(boxes.device)
    one_past = boxes.double() + torch.tensor([0, 0, 1, 1], dtype=torch.float64, device=boxes.device) * nonempty
    return tvops.box_convert(one_past, "xyxy", "xywh")


def _first_last(present: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(length, device=present.device)
    first = torch.where(present, idx, length).amin(dim=1)
    last = torch.where(present, idx, -1).amax(dim=1)
    return first, last


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return tvops.box_area(boxes)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) float xyxy -> (N, M) IoU (torchvision's; 0/0 gives NaN, which never
    suppresses, as in torchvision's NMS kernel)."""
    return tvops.box_iou(a, b)


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    protected: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, by score descending (ties keep input order).

    A box is dropped when its IoU with a kept, higher-ranked box is > ``iou_threshold``.
    Without ``protected`` this is ``torchvision.ops.nms``. ``protected`` boxes are always kept
    (they still suppress others), which torchvision cannot express: the exact greedy result is
    then computed without a per-box loop, iterating ``keep = protected | no kept earlier box
    overlaps`` to its fixed point (as many rounds as the longest suppression chain).
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if protected is None or not bool(protected.any()):
        return tvops.nms(boxes.float(), scores.float(), iou_threshold)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order].float()
    earlier = torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu(diagonal=1)
    # in float64, as torchvision's CPU kernel compares its float IoU with the double threshold (an IoU
    # of exactly 0.3 in float32 is above 0.3)
    overlaps = (box_iou(sorted_boxes, sorted_boxes).double() > iou_threshold) & earlier  # [j, i]: j before i
    forced = (
        protected[order] if protected is not None else torch.zeros(n, dtype=torch.bool, device=boxes.device)
    )
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for _ in range(MAX_NMS_ROUNDS):
        suppressed = (overlaps & keep[:, None]).any(dim=0)
        new_keep = ~suppressed | forced
        if torch.equal(new_keep, keep):
            return order[keep]
        keep = new_keep
    # A long suppression chain: finish with the sequential pass on the host (same result).
    return order[_greedy_on_host(overlaps, forced)]


# Fixed-point rounds before NMS falls back to the host loop; real mask sets settle in a few.
MAX_NMS_ROUNDS = 32


def _greedy_on_host(overlaps: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    over = overlaps.cpu().numpy()
    force = forced.cpu().numpy()
    suppressed = np.zeros(over.shape[0], dtype=bool)
    keep = np.zeros(over.shape[0], dtype=bool)
    for i in range(over.shape[0]):
        if force[i] or not suppressed[i]:
            keep[i] = True
            suppressed |= over[i]
    return torch.from_numpy(keep).to(overlaps.device)


def near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_wh: tuple[int, int], atol: float = 20.0
) -> torch.Tensor:
    """(N,) bool: box (xyxy, in crop coordinates) within ``atol`` px of a crop edge that is not
    also an edge of the image (such masks are likely cut by the crop)."""
    x0, y0 = crop_box[0], crop_box[1]
    offset = torch.tensor([x0, y0, x0, y0], device=boxes.device)
    in_image = (boxes + offset).float()
    crop = torch.tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.tensor([0, 0, image_wh[0], image_wh[1]], dtype=torch.float32, device=boxes.device)
    at_crop = (in_image - crop).abs() <= atol
    at_image = (in_image - image).abs() <= atol
    return (at_crop & ~at_image).any(dim=1)

