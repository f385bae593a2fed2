"""SAM's simulated prompts for training (the paper's interactive-training recipe).

All coordinates are in the model's input frame (the resized, padded image of side
``image_size``); masks are in the decoder's low-resolution frame (side ``low_res``), one pixel
there covering ``image_size / low_res`` input pixels.

- `first_prompts`: per mask, either one positive point uniformly inside it, or its box with
  each side jittered by Gaussian noise (std ``jitter`` x the box side, at most 20 input pixels).
- `corrective_points`: per mask, one point uniformly from the error region of the previous
  prediction: positive where the mask was missed, negative where the prediction spilled over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_BOX_NOISE_PX = 20.0  # SAM's cap on box jitter, in input pixels


@dataclass
class Prompts:
    """Prompts of P masks: points (P, n, 2) xy and labels (P, n) (1 positive, 0 negative), and
    boxes (P, 4) xyxy or None."""

    points: torch.Tensor | None
    labels: torch.Tensor | None
    boxes: torch.Tensor | None

    def with_point(self, point: torch.Tensor, label: torch.Tensor) -> Prompts:
        """These prompts plus one more point per mask: point (P, 2), label (P,)."""
        point, label = point[:, None, :], label[:, None]
        if self.points is None:
            return Prompts(point, label, self.boxes)
        return Prompts(torch.cat([self.points, point], 1), torch.cat([self.labels, label], 1), self.boxes)


def _uniform_pixel(region: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(P, L, L) bool -> (P, 2) yx of one pixel drawn uniformly from each mask's True pixels
    (the mask's first pixel when it has none: an empty region has nothing to correct)."""
    flat = region.flatten(1).float()
    weights = torch.where(flat.sum(1, keepdim=True) > 0, flat, torch.ones_like(flat))
    index = torch.multinomial(weights, 1, generator=generator)[:, 0]
    side = region.shape[-1]
    return torch.stack([index // side, index % side], dim=1)


def _to_input_xy(yx: torch.Tensor, scale: float) -> torch.Tensor:
    """Low-res pixel (y, x) -> its centre in input coordinates (x, y)."""
    return (yx.flip(1).float() + 0.5) * scale


def mask_boxes(masks: torch.Tensor, scale: float) -> torch.Tensor:
    """(P, L, L) bool -> (P, 4) xyxy boxes in input coordinates (the pixels' outer edges)."""
    rows, cols = masks.any(2), masks.any(1)
    side = masks.shape[-1]
    steps = torch.arange(side, device=masks.device)
    y0 = torch.where(rows, steps, side).min(1).values
    y1 = torch.where(rows, steps, -1).max(1).values + 1
    x0 = torch.where(cols, steps, side).min(1).values
    x1 = torch.where(cols, steps, -1).max(1).values + 1
    return torch.stack([x0, y0, x1, y1], 1).float() * scale


def jittered(boxes: torch.Tensor, jitter: float, limit: float, generator: torch.Generator) -> torch.Tensor:
    """Boxes with each coordinate moved by N(0, jitter x the box side), capped, kept in frame."""
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device) * jitter * sides
    noise = noise.clamp(-MAX_BOX_NOISE_PX, MAX_BOX_NOISE_PX)
    moved = (boxes + noise).clamp(0, limit)
    low = torch.minimum(moved[:, :2], moved[:, 2:] - 1)  # keep x0 < x1, y0 < y1
    return torch.cat([low.clamp(min=0), moved[:, 2:]], 1)


def first_prompts(masks: torch.Tensor, use_box: bool, image_size: int, jitter: float,
                  generator: torch.Generator) -> Prompts:
    """The first prompt of each mask (P, L, L): a point inside it, or its jittered box."""
    scale = image_size / masks.shape[-1]
    if use_box:
        return Prompts(None, None, jittered(mask_boxes(masks, scale), jitter, float(image_size), generator))
    points = _to_input_xy(_uniform_pixel(masks, generator), scale)
    return Prompts(points[:, None, :], torch.ones(len(masks), 1, dtype=torch.long, device=masks.device), None)


def corrective_points(predicted: torch.Tensor, masks: torch.Tensor, image_size: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per mask from the error of ``predicted`` (P, L, L bool) against
    ``masks``: (points (P, 2) xy, labels (P,)) - 1 on a missed pixel, 0 on a spilled one."""
    error = predicted ^ masks
    yx = _uniform_pixel(error, generator)
    label = masks[torch.arange(len(masks), device=masks.device), yx[:, 0], yx[:, 1]].long()
    return _to_input_xy(yx, image_size / masks.shape[-1]), label


def centre_point(masks: torch.Tensor, image_size: int) -> torch.Tensor:
    """(P, L, L) bool -> (P, 2) xy: each mask's pixel nearest its centroid (always inside it);
    the deterministic prompt of held-out scoring."""
    side = masks.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(side, device=masks.device), torch.arange(side, device=masks.device),
                            indexing="ij")
    weights = masks.float()
    total = weights.sum((1, 2)).clamp(min=1)
    cy = (weights * ys).sum((1, 2)) / total
    cx = (weights * xs).sum((1, 2)) / total
    distance = (ys[None] - cy[:, None, None]) ** 2 + (xs[None] - cx[:, None, None]) ** 2
    distance = torch.where(masks, distance, torch.full_like(distance, float("inf")))
    index = distance.flatten(1).argmin(1)
    return _to_input_xy(torch.stack([index // side, index % side], 1), image_size / side)
