"""Automatic mask generation (SAM's data engine), batched and device-resident.

    from samflow.models.amg import AmgParams, MaskGenerator
    gen = MaskGenerator(load_model("sam", uri), AmgParams(**cfg.engine.model_dump()))
    records = gen.generate(images, boxes=per_image_xyxy_or_None, box_scores=per_image_scores_or_None)

Modules: ``params`` (AmgParams), ``grid`` (point grids, crop boxes), ``postprocess`` (decoder
outputs -> filtered masks of one crop), ``filters`` (stability score, small regions without
OpenCV), ``boxes`` (mask boxes, exact batched greedy NMS), ``rle_torch`` (COCO RLE on the
device), ``maskset`` (ragged per-image mask store), ``generator`` (MaskGenerator).
"""

from __future__ import annotations

from typing import Any

from samflow.models.amg.params import AmgParams

__all__ = ["AmgParams", "MaskGenerator"]


def __getattr__(name: str) -> Any:
    # The generator (torch) loads on first use: the run config reads AmgParams' fields cheaply.
    if name == "MaskGenerator":
        from samflow.models.amg.generator import MaskGenerator

        return MaskGenerator
    raise AttributeError(name)
