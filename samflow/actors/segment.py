"""Segment stage: automatic masks for every healthy image of a batch (SAM through the engine).

With the propose stage's boxes (its ``proposals`` column) the engine runs its semi-automatic path: one
mask per box (source "box", with its proposal_score), then the point grid for the rest. Masks
come out in the original image's coordinates even when the pixels were upscaled. Masks of the
concepts stage (SAM 3) stay first in the row, and the point grid skips the pixels they cover.
"""

from __future__ import annotations

from typing import Any

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
from samflow.actors.concepts import concept_coverage
from samflow.actors.propose import label_box_records, proposal_labels_at, proposals_at
from samflow.actors.rescale import records_to_original
from samflow.actors.stage import StageConfig, StageContext, context_or_default
from samflow.schemas import masks as mask_column

STAGE = "segment"


class SegmentConfig(StageConfig):
    """SAM through the mask-generation engine (parameters under ``engine``)."""

    model: str = Field("facebook/sam-vit-base", description="SAM model URI.")
    batch_size: int = Field(2, ge=1, description="Images per engine call (each is many decoder calls).")


class SegmentStage:
    """Loads SAM once per actor; appends each row's masks to the batch's ``masks`` column
    (``samflow.schemas.masks``; no masks for rows that failed here or earlier)."""

    def __init__(
        self, config: SegmentConfig, context: StageContext | None = None, device: str | None = None,
        runner: Any = None,
    ) -> None:
        """The engine's parameters are the run's ``engine`` section; ``runner``: an already loaded
        SAM runner (or one with its interface) instead of the config's model."""
        from samflow.models.amg import AmgParams, MaskGenerator

        if runner is None:
            from samflow.models.loading.registry import load_model

            runner = load_model("sam", config.model, device=device)
        self.sam = runner
        self.generator = MaskGenerator(self.sam, AmgParams(**context_or_default(context).run.engine.model_dump()))
        self.info = {"model": config.model, "checkpoint_sha256": self.sam.checkpoint_sha256}

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            rows = healthy(batch).tolist()

            def infer(chunk: list[int]) -> list[list[dict[str, Any]]]:
                images = [image_at(batch, r) for r in chunk]
                proposals = [proposals_at(batch, r) for r in chunk]
                boxes = [None if p is None else p[0] for p in proposals]
                scores = [None if p is None else p[1] for p in proposals]
                covered = [concept_coverage(batch, r, upscale_factor_at(batch, r)) for r in chunk]
                masks = self.generator.generate(images, boxes=boxes, box_scores=scores, covered=covered)
                for records, found, r in zip(masks, proposals, chunk):  # detector class names
                    if found is not None:
                        label_box_records(records, found[0], found[1], proposal_labels_at(batch, r))
                return [records_to_original(m, upscale_factor_at(batch, r)) for m, r in zip(masks, chunk)]

            masks = infer_or_fail(batch, STAGE, rows, infer)
            mask_column.add(batch, [masks.get(r, []) for r in range(len(batch["uri"]))])
        return batch
