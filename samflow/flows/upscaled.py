"""Saving upscaled images: ``DST/upscaled/<item_id>.png`` for every row the upscale stage enlarged.

Runs as a Ray Data task right after the upscale stage (``stages.upscale.save``). Names are the
item's stable id, so a retried or resumed run overwrites its own files instead of adding new ones.
A failed write makes the row an error row (stage ``upscale_save``): never silent.
"""

from __future__ import annotations

import io
import posixpath

import numpy as np
from PIL import Image

from samflow.actors.batch import Batch, healthy, image_at, mark_error, upscale_factor_at
from samflow.flows.config import StorageConfig
from samflow.flows.storage import write_bytes

UPSCALED = "upscaled"
STAGE = "upscale_save"


def upscaled_uri(dst: str, item_id: str) -> str:
    return posixpath.join(dst.rstrip("/"), UPSCALED, f"{item_id}.png")


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_upscaled(batch: Batch, *, dst: str, storage: StorageConfig) -> Batch:
    """Write the upscaled pixels of every healthy upscaled row; pass the batch on unchanged."""
    for row in healthy(batch).tolist():
        if upscale_factor_at(batch, row) == 1:
            continue
        try:
            data = png_bytes(image_at(batch, row))
            write_bytes(upscaled_uri(dst, str(batch["item_id"][row])), data, storage)
        except Exception as exc:  # noqa: BLE001 - a failed write becomes an error row
            mark_error(batch, row, STAGE, exc)
    return batch
