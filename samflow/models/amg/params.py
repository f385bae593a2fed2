"""Parameters of automatic mask generation.

Field names match ``samflow.config.EngineConfig`` exactly, so the segment stage can do
``AmgParams(**cfg.engine.model_dump())``. Defaults are the published SAM ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AmgParams:
    points_per_side: int | None = 32
    # Point prompts decoded per crop per decoder call (several crops share one call).
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    # Keep the best N masks per image by predicted_iou after NMS; 0 keeps all.
    max_masks_per_image: int = 0
    # Not in the run config: explicit grids in [0, 1] (x, y), one per crop layer. When given,
    # points_per_side must be None (as in SAM).
    point_grids: list[np.ndarray] | None = None
    # Not in the run config: how many crops (of all images in the call) go through one
    # encoder call; bounds encoder memory.
    crops_per_encode: int = 8
    # Not in the run config: upper bound on prompts in one decoder call (crops x points).
    prompts_per_decode: int = 1024

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
