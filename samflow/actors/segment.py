"""Segment stage: automatic masks for every healthy image of a batch (SAM through the engine).

With the propose stage's boxes (its ``proposals`` column) the engine runs its semi-automatic path: one
mask per box (source "box", with its proposal_score), then the point grid for the rest. Masks
come out in the original image's coordinates even when the pixels were upscaled. Masks of the
concepts stage (SAM 3) stay first in the row, and the point grid skips the pixels they cover.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from samflow.actors.rescale import records_to_original
from samflow.actors.stage import StageConfig, StageContext, context_or_default
from samflow.schemas import masks as mask_column
from samflow.schemas import proposals, rle

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

            runner = load_model("auto", config.model, task="segment", device=device)
        self.sam = runner
        self.generator = MaskGenerator(self.sam, AmgParams(**context_or_default(context).run.engine.model_dump()))
        self.info = {"model": config.model, "checkpoint_sha256": self.sam.checkpoint_sha256}

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            rows = healthy(batch).tolist()

            def infer(chunk: list[int]) -> list[list[dict[str, Any]]]:
                images = [image_at(batch, r) for r in chunk]
                found_boxes = [proposals.boxes_at(batch, r) for r in chunk]
                boxes = [None if p is None else p[0] for p in found_boxes]
                scores = [None if p is None else p[1] for p in found_boxes]
                covered = [concept_coverage(batch, r, upscale_factor_at(batch, r)) for r in chunk]
                masks = self.generator.generate(images, boxes=boxes, box_scores=scores, covered=covered)
                for records, found, r in zip(masks, found_boxes, chunk):  # detector class names
                    if found is not None:
                        label_box_records(records, found[0], found[1], proposals.labels_at(batch, r))
                return [records_to_original(m, upscale_factor_at(batch, r)) for m, r in zip(masks, chunk)]

            masks = infer_or_fail(batch, STAGE, rows, infer)
            mask_column.add(batch, [masks.get(r, []) for r in range(len(batch["uri"]))])
        return batch


def concept_coverage(batch: Batch, row: int, factor: int = 1) -> np.ndarray | None:
    """(H*factor, W*factor) bool union of the row's concept masks (in the pixels a later stage
    sees when upscale enlarged them ``factor`` times), or None without any."""
    column = batch.get(mask_column.COLUMN)
    if column is None:
        return None
    found = [rle.decode(r["segmentation"]) for r in mask_column.records_at(column, row) if r["source"] == mask_column.CONCEPT_SOURCE]
    if not found:
        return None
    union = np.logical_or.reduce(found)
    if factor > 1:
        union = union.repeat(factor, axis=0).repeat(factor, axis=1)
    return union


def label_box_records(
    records: list[dict[str, Any]], boxes: np.ndarray, scores: np.ndarray, labels: Sequence[str]
) -> None:
    """Give each box-prompted record (source "box") the class name of the proposal that prompted
    it, as ``label`` / ``label_score``, in place. The engine keeps a box record's proposal score,
    so the prompt is the proposal with that score whose box best overlaps the mask's box."""
    if not any(labels):
        return
    for record in records:
        if record.get("source") != "box" or record.get("proposal_score") is None:
            continue
        candidates = np.flatnonzero(np.isclose(scores, record["proposal_score"], rtol=0, atol=1e-6))
        if candidates.size == 0:
            continue
        x, y, w, h = record["bbox"]
        best = max(candidates, key=lambda i: _iou(boxes[i], (x, y, x + w, y + h)))
        if labels[best]:
            record["label"], record["label_score"] = labels[best], float(scores[best])


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
