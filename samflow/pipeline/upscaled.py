"""Saving upscaled images: ``DST/upscaled/<item_id>.png`` for every image the upscale stage
enlarged (``stages.upscale.save``).

The upscale actor calls an :class:`UpscaledWriter` (built here, passed to it by the graph) right
after upscaling, so the enlarged pixels need no extra pass through the object store and no extra
task to schedule. Names are the item's stable id: a retried or resumed run overwrites its own
files instead of adding new ones.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from samflow.config import StorageConfig
from samflow.store.storage import join, write_bytes

UPSCALED = "upscaled"


def upscaled_uri(dst: str, item_id: str) -> str:
    return join(dst, UPSCALED, f"{item_id}.png")


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class UpscaledWriter:
    """``writer(item_id, image)`` writes the image as DST/upscaled/<item_id>.png (picklable)."""

    def __init__(self, dst: str, storage: StorageConfig) -> None:
        self.dst = dst
        self.storage = storage

    def __call__(self, item_id: str, image: np.ndarray) -> None:
        write_bytes(upscaled_uri(self.dst, item_id), png_bytes(image), self.storage)
