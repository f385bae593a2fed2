"""The generation stage (a Ray Data actor): candidates in, JPEG images out.

For each candidate the conditioning masks are resized to the generated image's size (masks a
resize empties are left out), painted into the condition map (``condition.py``) and handed with
the prompt and seed to SD + ControlNet. A candidate that fails becomes a row with an ``error``;
the others go on.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from samflow.schemas import rle
from samflow.synth.condition import output_size, render, resize_mask
from samflow.synth.plan import CANDIDATES, CONDITION_MASK

STAGE_INFO = pa.struct([("model", pa.string()), ("checkpoint_sha256", pa.string()), ("busy_s", pa.float64()),
                        ("pid", pa.int64())])
GENERATED = pa.schema([
    *[f for f in CANDIDATES if f.name not in ("height", "width", "masks")],
    ("source_height", pa.int32()), ("source_width", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
    ("masks", pa.list_(CONDITION_MASK)), ("image", pa.binary()), ("condition", pa.binary()),
    ("error", pa.string()), ("generate_info", STAGE_INFO),
])


def encode_image(pixels: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


class GenerateStage:
    """Loads the SD + ControlNet pair once per actor (``model_uri`` / ``controlnet_uri`` are
    local paths, Hub ids or in-code URIs: ``fetch`` resolves object-store ones first)."""

    def __init__(self, model_uri: str, controlnet_uri: str | None, settings: dict[str, Any],
                 fetch: Any = None) -> None:
        import torch

        from samflow.models.controlnet import load_pair

        local = (lambda uri: uri) if fetch is None else fetch
        dtype = settings.get("dtype", "auto")
        self.runner = load_pair(local(model_uri), None if controlnet_uri is None else local(controlnet_uri),
                                dtype=getattr(torch, dtype) if dtype != "auto" and torch.cuda.is_available() else None)
        self.settings = settings
        self.info = {"model": model_uri if controlnet_uri is None else f"{model_uri} + {controlnet_uri}",
                     "checkpoint_sha256": self.runner.checkpoint_sha256}

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        rows = batch.to_pylist()
        prepared = [self._prepare(row) for row in rows]
        ready = [i for i, p in enumerate(prepared) if p["error"] == ""]
        if ready:
            try:
                images = self.runner.generate(
                    [prepared[i]["pixels"] for i in ready], [rows[i]["prompt"] for i in ready],
                    [rows[i]["seed"] for i in ready], negative_prompt=self.settings["negative_prompt"],
                    steps=self.settings["steps"], guidance_scale=self.settings["guidance_scale"],
                    conditioning_scale=self.settings["conditioning_scale"],
                )
                for i, image in zip(ready, images, strict=True):
                    prepared[i]["image"] = encode_image(image, "JPEG", self.settings["jpeg_quality"])
            except Exception as exc:  # noqa: BLE001 - a failed batch fails its candidates, not the run
                for i in ready:
                    prepared[i]["error"] = f"generate: {type(exc).__name__}: {exc}"
        info = dict(self.info, busy_s=(time.perf_counter() - started) / max(1, len(rows)), pid=os.getpid())
        out = [self._row(row, p, info) for row, p in zip(rows, prepared, strict=True)]
        return pa.Table.from_pylist(out, schema=GENERATED)

    def _prepare(self, row: dict[str, Any]) -> dict[str, Any]:
        size = output_size(row["height"], row["width"], self.settings["short_side"], self.settings["max_side"],
                           self.runner.size_multiple)
        try:
            masks, records = [], []
            for record in row["masks"]:
                mask = resize_mask(rle.decode(record["segmentation"]), size)
                if mask.any():
                    masks.append(mask)
                    records.append(dict(record, segmentation=rle.encode(mask)))
            if not masks:
                return {"size": size, "masks": [], "error": "no_masks: every mask is empty at the generated size"}
            pixels = render(masks, [r["label"] for r in records], size)
        except (ValueError, KeyError, TypeError) as exc:
            return {"size": size, "masks": [], "error": f"condition: {type(exc).__name__}: {exc}"}
        condition = encode_image(pixels, "PNG") if self.settings["save_conditions"] else b""
        return {"size": size, "masks": records, "pixels": pixels, "condition": condition, "error": ""}

    @staticmethod
    def _row(row: dict[str, Any], prepared: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        height, width = prepared["size"]
        return {**{k: row[k] for k in ("key", "item_id", "uri", "variant", "seed", "prompt")},
                "source_height": row["height"], "source_width": row["width"], "height": height, "width": width,
                "masks": prepared["masks"], "image": prepared.get("image", b""),
                "condition": prepared.get("condition", b""), "error": prepared["error"], "generate_info": info}
