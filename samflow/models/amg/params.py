"""Parameters of automatic mask generation.

The fields marked for the config are the run config's ``engine`` section (``samflow.config``
builds it from them), so a stage does ``AmgParams(**cfg.engine.model_dump())``. Defaults are the
published SAM ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _doc(text: str, config: bool = True) -> dict[str, Any]:
    """Field metadata: its description in the run config (``engine``), or out of it."""
    return {"doc": text, "config": config}


@dataclass
class AmgParams:
    """The engine's parameters; those marked for the config are the run config's ``engine`` section."""

    points_per_side: int | None = field(default=32, metadata=_doc("Point grid per side of each crop; null with point_grids."))
    points_per_batch: int = field(default=64, metadata=_doc("Point prompts decoded per crop per decoder call (several crops share one call)."))
    pred_iou_thresh: float = field(default=0.88, metadata=_doc("Keep masks whose predicted IoU is at least this."))
    stability_score_thresh: float = field(default=0.95, metadata=_doc("Keep masks whose stability score is at least this."))
    stability_score_offset: float = field(default=1.0, metadata=_doc("Logit offset of the stability score's two thresholds."))
    mask_threshold: float = field(default=0.0, metadata=_doc("Logit above which a pixel is in the mask."))
    box_nms_thresh: float = field(default=0.7, metadata=_doc("Box IoU above which the worse of two masks of a crop is dropped."))
    crop_n_layers: int = field(default=0, metadata=_doc("Layers of image crops (0: the whole image only)."))
    crop_nms_thresh: float = field(default=0.7, metadata=_doc("Box IoU above which the worse of two masks of different crops is dropped."))
    crop_overlap_ratio: float = field(default=512 / 1500, metadata=_doc("Overlap of neighbouring crops, as a share of the crop size."))
    crop_n_points_downscale_factor: int = field(default=1, metadata=_doc("Points per side shrink by this factor per crop layer."))
    min_mask_region_area: int = field(default=0, metadata=_doc("Holes and islands smaller than this many pixels are removed (0: off)."))
    max_masks_per_image: int = field(default=0, metadata=_doc("Keep the best N masks per image by predicted IoU after NMS; 0 = all."))
    point_grids: list[np.ndarray] | None = field(default=None, metadata=_doc(
        "Explicit grids in [0, 1] (x, y), one per crop layer; points_per_side must then be None (as in SAM).", config=False))
    crops_per_encode: int = field(default=8, metadata=_doc(
        "Crops (of all images in the call) per encoder call; bounds encoder memory.", config=False))
    prompts_per_decode: int = field(default=1024, metadata=_doc(
        "Upper bound on prompts in one decoder call (crops x points).", config=False))

    def __post_init__(self) -> None:
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError("exactly one of points_per_side and point_grids must be set")
        if self.point_grids is not None and len(self.point_grids) != self.crop_n_layers + 1:
            raise ValueError(
                f"point_grids has {len(self.point_grids)} grids, expected crop_n_layers + 1 = "
                f"{self.crop_n_layers + 1}"
            )
        if self.points_per_batch < 1 or self.crops_per_encode < 1 or self.prompts_per_decode < 1:
            raise ValueError("points_per_batch, crops_per_encode and prompts_per_decode must be >= 1")
        if self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            raise ValueError("crop_n_layers must be >= 0 and crop_n_points_downscale_factor >= 1")
        if self.max_masks_per_image < 0 or self.min_mask_region_area < 0:
            raise ValueError("max_masks_per_image and min_mask_region_area must be >= 0")
