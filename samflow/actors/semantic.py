"""Semantic stage: a segmentation model's class map per healthy image, as mask rows.

One annotation record per class present in the image (``source = "semantic"``, ``label`` = the
class name, ``label_score`` = the mean confidence over the region), or with
``connected_components`` one per connected region (8-connectivity) of each class. Classes named
in ``skip_classes`` (default "background") give no rows; regions smaller than ``min_area`` pixels
are dropped. The map is computed on the pixels the stage sees (upscaled when upscale ran) and the
records are mapped back to the original image. Records are appended to the row's ``masks``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from samflow.actors.batch import (
    Batch,
    arrow_batches,
    healthy,
    image_at,
    infer_or_fail,
    stage_meta,
    upscale_factor_at,
)
from samflow.actors.mask_records import append_records, mask_record
from samflow.actors.rescale import records_to_original
from samflow.actors.stage import StageConfig, StageContext

STAGE = "semantic"


class SemanticConfig(StageConfig):
    """Semantic segmentation (a U-Net or a torchvision segmentation model): one mask row per
    class region, source "semantic"."""

    enabled: bool = Field(False, description="Off by default.")
    model: str = Field(
        "", description="Segmentation checkpoint folder (config.json naming classes and input size + one "
        "weight file), s3:// / https:// copy of one, or tiny://unet.",
    )
    batch_size: int = Field(4, ge=1, description="Images per model call.")
    classes: list[str] = Field(
        default_factory=list, description="Class names in output-channel order; empty = the checkpoint's."
    )
    input_size: tuple[int, int] | None = Field(
        None, description="Model input (height, width); null = the checkpoint config's."
    )
    skip_classes: list[str] = Field(
        default_factory=lambda: ["background"], description="Classes that give no rows."
    )
    connected_components: bool = Field(
        False, description="One row per connected region of a class instead of one per class."
    )
    min_area: int = Field(1, ge=1, description="Regions smaller than this many pixels give no row.")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class SemanticStage:
    def __init__(self, config: SemanticConfig, context: StageContext | None = None, device: str | None = None) -> None:
        from samflow.models.loading.registry import ModelLoadError, load_model

        model_uri, classes, input_size = config.model, config.classes, config.input_size
        if not model_uri:
            raise ModelLoadError("stages.semantic.model is empty: name a segmentation checkpoint folder or tiny://unet")
        self.model = load_model("unet", model_uri, device=device)
        if classes:  # the config may rename the checkpoint's classes, never change their count
            if len(classes) != len(self.model.classes):
                raise ModelLoadError(
                    f"stages.semantic.classes names {len(classes)} classes, {model_uri} predicts {len(self.model.classes)}"
                )
            self.model.classes = list(classes)
        if input_size:
            self.model.input_size = (int(input_size[0]), int(input_size[1]))
        self.skip = set(config.skip_classes)
        self.connected_components = config.connected_components
        self.min_area = config.min_area
        self.info = {"model": model_uri, "checkpoint_sha256": self.model.checkpoint_sha256,
                     "classes": self.model.classes}

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            rows = healthy(batch).tolist()

            def infer(chunk: list[int]) -> list[list[dict[str, Any]]]:
                maps = self.model.segment([image_at(batch, r) for r in chunk])
                return [records_to_original(self.records(labels, confidence), upscale_factor_at(batch, r))
                        for (labels, confidence), r in zip(maps, chunk)]

            append_records(batch, infer_or_fail(batch, STAGE, rows, infer))
        return batch

    def records(self, labels: np.ndarray, confidence: np.ndarray) -> list[dict[str, Any]]:
        """Mask records of one label map, by class id (and region, with connected components)."""
        out = []
        for class_id in np.unique(labels).tolist():
            name = self.model.classes[class_id]
            if name in self.skip:
                continue
            for region in self._regions(labels == class_id):
                if int(region.sum()) < self.min_area:
                    continue
                score = float(confidence[region].mean())
                record = mask_record(region, source=STAGE, label=name, label_score=score)
                if record is not None:
                    out.append(record)
        return out

    def _regions(self, mask: np.ndarray) -> list[np.ndarray]:
        if not self.connected_components:
            return [mask]
        # Imported here: every process that reads the run config imports this module.
        from scipy import ndimage

        components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        return [components == k for k in range(1, count + 1)]
