"""Batched image pre-processing in torch, on the model device.

Images arrive as HxWx3 uint8 RGB numpy arrays of possibly different sizes. They are moved to the
device once, grouped by shape so every resize is one `interpolate` call per distinct size (not per
image), then normalised and padded/cropped as a whole batch.

Public: `Normalisation`, `to_device`, `resize_longest_pad`, `resize_shortest_center_crop`,
`resize_square`, `pad_square_resize`, `scale_xy`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float in [0,255] -> normalised float."""
        mean = torch.tensor(self.mean, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1) * 255.0
        return (batch - mean) / std


def check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")


def to_device(images: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """List of (3,H,W) float32 tensors on `device` (one host->device copy per distinct shape)."""
    out: list[torch.Tensor | None] = [None] * len(images)
    for shape, indices in _group_by_shape([im.shape for im in images]).items():
        for i in indices:
            check_image(images[i])
        stacked = torch.from_numpy(np.stack([images[i] for i in indices])).to(device, non_blocking=True)
        stacked = stacked.permute(0, 3, 1, 2).float()
        for j, i in enumerate(indices):
            out[i] = stacked[j]
    return out  # type: ignore[return-value]


def _group_by_shape(shapes: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, shape in enumerate(shapes):
        groups[tuple(shape)].append(i)
    return groups


def _resize_grouped(
    tensors: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], mode: str = "bilinear"
) -> list[torch.Tensor]:
    """Resize tensors[i] (3,H,W) to sizes[i]; one interpolate call per (input, output) shape pair."""
    keys = [(tuple(t.shape), tuple(s)) for t, s in zip(tensors, sizes)]
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for (in_shape, size), indices in _group_by_shape(keys).items():
        batch = torch.stack([tensors[i] for i in indices])
        if tuple(in_shape[1:]) != tuple(size):
            antialias = mode in ("bilinear", "bicubic")
            batch = F.interpolate(batch, size=size, mode=mode, align_corners=False, antialias=antialias)
        for j, i in enumerate(indices):
            out[i] = batch[j]
    return out  # type: ignore[return-value]


def longest_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to `target` (rounded as SAM's processor does)."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_pad(
    images: Sequence[np.ndarray], target: int, norm: Normalisation, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """SAM-style: longest side -> target, normalise, zero-pad bottom/right to target x target.

    Returns (pixels (B,3,target,target) in `dtype`, original (H,W) sizes, resized (h,w) sizes).
    """
    tensors = to_device(images, device)
    originals = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
    resized_sizes = [longest_side_size(h, w, target) for h, w in originals]
    resized = _resize_grouped(tensors, resized_sizes)
    batch = torch.zeros((len(images), 3, target, target), device=device, dtype=torch.float32)
    valid = torch.zeros((len(images), 1, target, target), device=device, dtype=torch.float32)
    for i, (t, (h, w)) in enumerate(zip(resized, resized_sizes)):
        batch[i, :, :h, :w] = t
        valid[i, :, :h, :w] = 1.0
    # normalise the whole batch at once; padding stays exactly zero, as in SAM's processor
    batch = norm.apply(batch.clamp_(0, 255)) * valid
    return batch.to(dtype), originals, resized_sizes


def resize_shortest_center_crop(
    images: Sequence[np.ndarray],
    size: int,
    norm: Normalisation,
    device: torch.device,
    dtype: torch.dtype,
    resize_to: int | None = None,
) -> torch.Tensor:
    """CLIP / DINOv2-style: shortest side -> resize_to (default size; bicubic), centre crop
    size x size, normalise."""
    shortest = resize_to or size
    tensors = to_device(images, device)
    targets = []
    for t in tensors:
        h, w = int(t.shape[1]), int(t.shape[2])
        # the long side is truncated, as the HF processors do, so crops line up pixel for pixel
        long_side = int(shortest * max(h, w) / min(h, w))
        targets.append((shortest, long_side) if h <= w else (long_side, shortest))
    resized = _resize_grouped(tensors, targets, mode="bicubic")
    crops = []
    for t in resized:
        top = (t.shape[1] - size) // 2
        left = (t.shape[2] - size) // 2
        crops.append(t[:, top : top + size, left : left + size])
    batch = torch.stack(crops).clamp(0, 255)
    return norm.apply(batch).to(dtype)


def resize_square(
    images: Sequence[np.ndarray],
    size: tuple[int, int],
    norm: Normalisation,
    device: torch.device,
    dtype: torch.dtype,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resize every image to `size` (h, w) ignoring aspect ratio, normalise (SigLIP, DINOv2, SAM 2)."""
    tensors = to_device(images, device)
    resized = _resize_grouped(tensors, [size] * len(tensors), mode=mode)
    return norm.apply(torch.stack(resized).clamp(0, 255)).to(dtype)


def pad_square_resize(
    images: Sequence[np.ndarray], size: int, norm: Normalisation, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """OWLv2-style: zero-pad bottom/right to a square of the longest side, resize to size x size,
    normalise. Returns (pixels, original (H, W) sizes); model boxes normalised to the padded
    square map back to pixels by multiplying with max(H, W)."""
    tensors = to_device(images, device)
    originals = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
    squares = [F.pad(t, (0, max(h, w) - w, 0, max(h, w) - h)) for t, (h, w) in zip(tensors, originals)]
    resized = _resize_grouped(squares, [(size, size)] * len(squares))
    return norm.apply(torch.stack(resized).clamp(0, 255)).to(dtype), originals


def scale_xy(coords: torch.Tensor, from_sizes: Sequence[tuple[int, int]], to_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Rescale xy coordinates (B, ..., 2k) from each image's (H,W) frame to another (h,w) frame."""
    src = torch.tensor(from_sizes, dtype=torch.float32, device=coords.device)  # (B,2) as (H,W)
    dst = torch.tensor(to_sizes, dtype=torch.float32, device=coords.device)
    factor_xy = (dst / src).flip(-1)  # (B,2) as (sx, sy)
    repeats = coords.shape[-1] // 2
    factor = factor_xy.repeat(1, repeats).view(coords.shape[0], *([1] * (coords.dim() - 2)), coords.shape[-1])
    return coords.float() * factor


def checked_prompts(points: torch.Tensor | None, boxes: torch.Tensor | None, images: int) -> torch.Tensor:
    """The one prompt tensor of a SAM-style decode: (B, N, 2) points or (B, N, 4) xyxy boxes,
    B = ``images``. Exactly one of the two must be given."""
    if (points is None) == (boxes is None):
        raise ValueError("pass exactly one of points or boxes")
    prompts = points if points is not None else boxes
    width = 2 if points is not None else 4
    if prompts.dim() != 3 or prompts.shape[0] != images or prompts.shape[2] != width:
        raise ValueError(f"prompts must be (B={images}, N, {width}); got {tuple(prompts.shape)}")
    return prompts
