"""A scene oracle that honours the SAM runner contract, for engine tests with known answers.

Random-weight SAM models give meaningless masks, so tests about *which* masks come out (box
prompts cover their objects, grid masks fill the rest) use this oracle: images are flat-colour
scenes, a point prompt's mask is the colour region under the point, a box prompt's mask is the
object with the most pixels inside the box. Its "low-res" logits are at the crop's own size,
padded (like SAM's padded input) to the largest crop of the call; ``postprocess_masks`` cuts the
padding off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

LOGIT = 8.0
OBJECT_IOU = (0.97, 0.93, 0.90)
BACKGROUND_IOU = (0.40, 0.35, 0.30)


@dataclass
class OracleEncoding:
    labels: list[torch.Tensor]  # (H, W) int64 per image: 0 background, >0 objects
    original_sizes: list[tuple[int, int]]
    input_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.labels)


class SceneOracle:
    image_size = 64
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self) -> None:
        self.decode_calls: list[tuple[int, int]] = []  # (images, prompts per image) per call

    def encode(self, images: Sequence[np.ndarray]) -> OracleEncoding:
        labels = [torch.as_tensor(color_labels(im)) for im in images]
        sizes = [tuple(im.shape[:2]) for im in images]
        return OracleEncoding(labels, sizes, sizes)

    def decode(self, enc, image_indices, *, points=None, boxes=None, multimask_output=True, image_only=False):
        # image_only: the oracle's logits are the image's own pixels already
        prompts = points if points is not None else boxes
        self.decode_calls.append((prompts.shape[0], prompts.shape[1]))
        k = 3 if multimask_output else 1
        logits, ious = [], []
        for b, index in enumerate(image_indices):
            labels = enc.labels[index]
            per_prompt = [
                self._point(labels, p) if points is not None else self._box(labels, p) for p in prompts[b].tolist()
            ]
            logits.append(torch.stack([torch.stack([m] * k) for m, _ in per_prompt]))
            ious.append(torch.tensor([list(iou[:k]) for _, iou in per_prompt], dtype=torch.float32))
        h = max(x.shape[-2] for x in logits)
        w = max(x.shape[-1] for x in logits)
        padded = [torch.nn.functional.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), value=-LOGIT) for x in logits]
        return torch.stack(padded), torch.stack(ious)

    def postprocess_masks(self, low_res_logits, enc, image_index):
        h, w = enc.original_sizes[image_index]
        return low_res_logits[..., :h, :w]

    @staticmethod
    def _point(labels: torch.Tensor, xy: list[float]) -> tuple[torch.Tensor, tuple[float, ...]]:
        h, w = labels.shape
        x = min(max(int(np.floor(xy[0])), 0), w - 1)
        y = min(max(int(np.floor(xy[1])), 0), h - 1)
        label = int(labels[y, x])
        mask = labels == label
        return _logits(mask), (OBJECT_IOU if label else BACKGROUND_IOU)

    @staticmethod
    def _box(labels: torch.Tensor, box: list[float]) -> tuple[torch.Tensor, tuple[float, ...]]:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        inside = labels[max(y0, 0) : y1, max(x0, 0) : x1].reshape(-1)
        inside = inside[inside > 0]
        if inside.numel() == 0:
            return _logits(torch.zeros_like(labels, dtype=torch.bool)), BACKGROUND_IOU
        label = int(torch.bincount(inside).argmax())
        return _logits(labels == label), OBJECT_IOU


def _logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, LOGIT, -LOGIT).to(torch.float32)


def color_labels(image: np.ndarray) -> np.ndarray:
    """Label map of a flat-colour image: 0 for black, 1.. for the other colours."""
    codes = (image[..., 0].astype(np.int64) << 16) | (image[..., 1].astype(np.int64) << 8) | image[..., 2]
    uniques, inverse = np.unique(codes, return_inverse=True)
    labels = inverse.reshape(codes.shape)
    if uniques[0] == 0:
        return labels
    return labels + 1


def make_scene(h: int, w: int, objects: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Black image with one filled rectangle (x0, y0, x1, y1) per object, each its own colour."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(objects):
        image[y0:y1, x0:x1] = (40 + (50 * i) % 200, 200 - (30 * i) % 180, 60 + (25 * i) % 190)
    return image
