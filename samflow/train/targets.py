"""Ground-truth masks in the frame the decoder predicts in.

SAM's decoder returns low-resolution logits (side ``low_res``) over the padded model input
(side ``image_size``): an image of size (H, W) fills its top-left (h, w) after its longest side
is scaled to ``image_size``. A mask goes there by the same scaling (antialiased, then
thresholded at half cover), the rest is padding (never the object). SAM 2 resizes every image
to a square, so there a mask fills the whole frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask

from samflow.models.common.preprocess import longest_side_size


def masks_in_frame(masks: np.ndarray, image_size: int, low_res: int, square: bool = False) -> np.ndarray:
    """(K, H, W) bool masks at the image's size -> (K, low_res, low_res) bool: padded (SAM), or
    stretched over the whole frame when the model resizes images to a square (``square``, SAM 2)."""
    k, height, width = masks.shape
    h, w = (image_size, image_size) if square else longest_side_size(height, width, image_size)
    rows, cols = max(1, round(h * low_res / image_size)), max(1, round(w * low_res / image_size))
    out = np.zeros((k, low_res, low_res), dtype=bool)
    if k:
        scaled = F.interpolate(torch.from_numpy(masks).float()[:, None], size=(rows, cols), mode="bilinear",
                               antialias=True, align_corners=False)[:, 0]
        out[:, :rows, :cols] = (scaled >= 0.5).numpy()
    return out


def decode_rles(counts: Sequence[str], height: int, width: int) -> np.ndarray:
    """COCO RLE counts strings of one image -> (K, H, W) bool."""
    if not counts:
        return np.zeros((0, height, width), dtype=bool)
    rles = [{"size": [height, width], "counts": c.encode("ascii")} for c in counts]
    return np.moveaxis(coco_mask.decode(rles), -1, 0).astype(bool)


def pack(masks: np.ndarray) -> bytes:
    """(K, L, L) bool -> bytes (one bit per pixel): how masks travel between Ray Data and the trainer."""
    return np.packbits(masks.reshape(-1)).tobytes()


def unpack(data: bytes, count: int, low_res: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * low_res * low_res)
    return bits.reshape(count, low_res, low_res).astype(bool)
