"""Upscale stage: Real-ESRGAN on images whose shorter side is under a threshold.

Adds ``upscale_factor`` to every row (the model's scale for upscaled rows, 1 otherwise) and
replaces an upscaled row's ``pixels`` with the enlarged image; ``width`` and ``height`` keep the
original size (see ``samflow.actors.batch``), so later stages work on the upscaled pixels and
report in original coordinates. To keep the upscaled images, the flow passes a ``save`` callable
(item id, HxWx3 uint8 image) that writes them: actors know no storage.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from samflow.actors.batch import (
    Batch,
    arrow_batches,
    healthy,
    image_at,
    infer_or_fail,
    mark_error,
    object_column,
    stage_meta,
)
from samflow.models.loading.registry import load_model

STAGE = "upscale"


class UpscaleStage:
    """Loads Real-ESRGAN once per actor. An image is upscaled when its shorter side is below
    ``min_short_side`` and its upscaled size stays within ``max_output_pixels``."""

    def __init__(
        self,
        model_uri: str,
        min_short_side: int = 256,
        max_output_pixels: int = 4096 * 4096,
        tile: int | None = 256,
        save: Callable[[str, np.ndarray], None] | None = None,
        device: str | None = None,
    ) -> None:
        self.esrgan = load_model("realesrgan", model_uri, device=device)
        self.scale = int(self.esrgan.scale)
        self.min_short_side = min_short_side
        self.max_output_pixels = max_output_pixels
        self.tile = tile
        self.save = save
        self.info = {
            "model": model_uri,
            "checkpoint_sha256": self.esrgan.checkpoint_sha256,
            "scale": self.scale,
        }

    def wants(self, height: int, width: int) -> bool:
        """Whether an image of this size is upscaled."""
        small = min(height, width) < self.min_short_side
        return small and height * width * self.scale**2 <= self.max_output_pixels

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            n = len(batch["uri"])
            rows = [
                r for r in healthy(batch).tolist()
                if self.wants(int(batch["height"][r]), int(batch["width"][r]))
            ]

            def infer(chunk: list[int]) -> list[bytes]:
                # Writable copies: torch warns on wrapping the batch's read-only pixel buffers.
                images = [image_at(batch, r).copy() for r in chunk]
                return [big.tobytes() for big in self.esrgan.upscale_batch(images, tile=self.tile)]

            upscaled = infer_or_fail(batch, STAGE, rows, infer)
            if self.save is not None:
                self._save(batch, upscaled)
            factors = np.ones(n, dtype=np.float32)
            factors[list(upscaled)] = self.scale
            batch["upscale_factor"] = factors
            if upscaled:  # untouched batches keep their pixel column as it is
                batch["pixels"] = object_column([upscaled.get(r, batch["pixels"][r]) for r in range(n)])
        return batch

    def _save(self, batch: Batch, upscaled: dict[int, bytes]) -> None:
        """Hand each upscaled image to ``save``; a row whose save fails becomes an error row."""
        for row in list(upscaled):
            h, w = int(batch["height"][row]) * self.scale, int(batch["width"][row]) * self.scale
            try:
                self.save(str(batch["item_id"][row]), np.frombuffer(upscaled[row], np.uint8).reshape(h, w, 3))
            except Exception as exc:  # noqa: BLE001 - a failed write is this row's error, not the batch's
                mark_error(batch, row, STAGE, exc)
                del upscaled[row]
