"""Upscale stage: Real-ESRGAN on images whose shorter side is under a threshold.

Adds ``upscale_factor`` to every row (the model's scale for upscaled rows, 1 otherwise) and
replaces an upscaled row's ``pixels`` with the enlarged image; ``width`` and ``height`` keep the
original size (see ``samflow.actors.batch``), so later stages work on the upscaled pixels and
report in original coordinates. With ``save`` on, each upscaled image is also written to
``DST/upscaled/<item_id>.png`` through the context's storage (a retried run overwrites its own files).
"""

from __future__ import annotations

import io

import numpy as np
from pydantic import Field

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
from samflow.actors.stage import StageConfig, StageContext, context_or_default

STAGE = "upscale"
UPSCALED = "upscaled"


class UpscaleConfig(StageConfig):
    """Real-ESRGAN on small images; later stages see the upscaled pixels, outputs stay in the
    original image's coordinates."""

    enabled: bool = Field(False, description="Off by default: upscaling costs more than any other stage.")
    model: str = Field(
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
        "#sha256=4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
        description="Real-ESRGAN checkpoint: a .pth / .safetensors file or a directory holding one; "
        "the default, the official x4plus release (pinned to its published sha256), is fetched once "
        "per node into the model cache.",
    )

    min_short_side: int = Field(
        256, ge=1, description="Only images whose shorter side is below this many pixels are upscaled."
    )
    max_output_pixels: int = Field(
        4096 * 4096, ge=1,
        description="An image whose upscaled size would exceed this many pixels is left as it is.",
    )
    tile: int | None = Field(
        256, ge=16, description="Tile size (input pixels) for tiled inference; null = whole images."
    )
    save: bool = Field(False, description="Also write each upscaled image to DST/upscaled/<item_id>.png.")


def upscaled_uri(dst: str, item_id: str) -> str:
    return f"{dst.rstrip('/')}/{UPSCALED}/{item_id}.png"


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class UpscaleStage:
    """Loads Real-ESRGAN once per actor. An image is upscaled when its shorter side is below
    ``min_short_side`` and its upscaled size stays within ``max_output_pixels``."""

    def __init__(self, config: UpscaleConfig, context: StageContext | None = None, device: str | None = None) -> None:
        from samflow.models.loading.registry import load_model

        context = context_or_default(context)
        self.esrgan = load_model("realesrgan", config.model, device=device)
        self.scale = int(self.esrgan.scale)
        self.config = config
        self.store = context.require_store("stages.upscale.save") if config.save else None
        self.dst = context.dst
        self.info = {
            "model": config.model,
            "checkpoint_sha256": self.esrgan.checkpoint_sha256,
            "scale": self.scale,
        }

    def wants(self, height: int, width: int) -> bool:
        """Whether an image of this size is upscaled."""
        small = min(height, width) < self.config.min_short_side
        return small and height * width * self.scale**2 <= self.config.max_output_pixels

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
                return [big.tobytes() for big in self.esrgan.upscale_batch(images, tile=self.config.tile)]

            upscaled = infer_or_fail(batch, STAGE, rows, infer)
            if self.store is not None:
                self._save(batch, upscaled)
            factors = np.ones(n, dtype=np.float32)
            factors[list(upscaled)] = self.scale
            batch["upscale_factor"] = factors
            if upscaled:  # untouched batches keep their pixel column as it is
                batch["pixels"] = object_column([upscaled.get(r, batch["pixels"][r]) for r in range(n)])
        return batch

    def _save(self, batch: Batch, upscaled: dict[int, bytes]) -> None:
        """Write each upscaled image; a row whose write fails becomes an error row."""
        for row in list(upscaled):
            h, w = int(batch["height"][row]) * self.scale, int(batch["width"][row]) * self.scale
            try:
                image = np.frombuffer(upscaled[row], np.uint8).reshape(h, w, 3)
                self.store.write(upscaled_uri(self.dst, str(batch["item_id"][row])), png_bytes(image))
            except Exception as exc:  # noqa: BLE001 - a failed write is this row's error, not the batch's
                mark_error(batch, row, STAGE, exc)
                del upscaled[row]
