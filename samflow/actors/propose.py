"""Propose stage: boxes per healthy image from one detector family, handed to segment as box prompts.

Families (``family``; "auto" reads it from the model URI / checkpoint config, see
``samflow.models.loading.registry.infer_family``):
  owlv2           class-agnostic objectness boxes, or open-vocabulary boxes for ``queries``
  grounding_dino  open-vocabulary boxes for ``queries`` (required)
  detr            closed-set boxes (RT-DETR v2, D-FINE) with the checkpoint's class names
  maskrcnn        closed-set boxes with class names, and instance masks: ``maskrcnn_masks``
                  "prompts" hands the boxes to segment (SAM draws the masks), "rows" keeps
                  Mask R-CNN's own masks as ``source = "maskrcnn"`` annotation rows instead

Adds the ``proposals`` column (``samflow.schemas.proposals``) in the pixels the stage saw
(upscaled ones when upscale ran: segment works on those same pixels). Segment copies a box's label and score onto the mask it prompts
(``label`` / ``label_score``). Rows that failed here or earlier get no boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
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
from samflow.schemas.proposals import COLUMN, PROPOSALS

STAGE = "propose"


class ProposeConfig(StageConfig):
    """Box proposals (OWLv2, Grounding DINO, RT-DETR / D-FINE, Mask R-CNN), given to segment as box prompts."""

    enabled: bool = Field(False, description="Off by default: segment then runs on the point grid alone.")
    model: str = Field(
        "google/owlv2-base-patch16-ensemble",
        description="Detector URI (OWLv2, Grounding DINO, RT-DETR / D-FINE, Mask R-CNN: torchvision://<builder> "
        "or a checkpoint folder).",
    )

    max_boxes: int = Field(50, ge=1, description="Keep at most this many boxes per image (best first).")
    score_thresh: float = Field(
        0.1, ge=0.0, le=1.0, description="Minimum objectness (or query) score of a kept box."
    )
    nms_iou: float = Field(0.5, ge=0.0, le=1.0, description="Boxes overlapping a better one above this IoU are dropped.")
    queries: list[str] = Field(
        default_factory=list,
        description="Text queries for open-vocabulary boxes; empty = class-agnostic objectness.",
    )
    family: Literal["auto", "owlv2", "grounding_dino", "detr", "maskrcnn"] = Field(
        "auto",
        description="Detector family of `model`: auto = from the URI / checkpoint config (model_type); "
        "owlv2 and grounding_dino take `queries` (grounding_dino needs them), detr (RT-DETR v2, D-FINE) and maskrcnn are closed-set "
        "and give their class names to the masks they prompt (label / label_score).",
    )
    maskrcnn_masks: Literal["prompts", "rows"] = Field(
        "prompts",
        description="Mask R-CNN only: prompts = its boxes prompt SAM in segment; rows = its own masks "
        "become annotation rows (source maskrcnn) and segment gets no box prompts.",
    )


def resolve_family(family: str, model_uri: str) -> str:
    """The detector family of ``model_uri`` (the model registry decides; "auto" tells it from the URI)."""
    from samflow.models.loading.registry import ModelLoadError, resolve_family as registry_family

    try:
        return registry_family(model_uri, "propose", family)
    except ModelLoadError as exc:
        raise ModelLoadError(f"stages.propose: {exc}") from None


class ProposeStage:
    """Loads the detector once per actor and maps batches to ``proposals`` (and, for Mask
    R-CNN with ``maskrcnn_masks="rows"``, its masks into the ``masks`` column)."""

    def __init__(self, config: ProposeConfig, context: StageContext | None = None, device: str | None = None) -> None:
        from samflow.models.loading.registry import ModelLoadError, load_model

        self.family = resolve_family(config.family, config.model)
        if self.family == "grounding_dino" and not config.queries:
            raise ModelLoadError("stages.propose: grounding_dino needs text queries (stages.propose.queries)")
        self.detector = load_model(self.family, config.model, task="propose", device=device)
        self.max_boxes = config.max_boxes
        self.score_thresh = config.score_thresh
        self.nms_iou = config.nms_iou
        self.queries = list(config.queries)
        self.mask_rows = self.family == "maskrcnn" and config.maskrcnn_masks == "rows"
        self.info = {"model": config.model, "family": self.family, "checkpoint_sha256": self.detector.checkpoint_sha256}

    def _detect(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """Per image: {"boxes", "scores", "labels"} and, for Mask R-CNN rows, "masks"."""
        limits = dict(max_boxes=self.max_boxes, nms_iou=self.nms_iou)
        if self.family == "owlv2":
            if not self.queries:
                found = self.detector.propose(images, min_score=self.score_thresh, **limits)
                return [_found(boxes, scores, [""] * len(scores)) for boxes, scores in found]
            found = self.detector.detect(images, self.queries, threshold=self.score_thresh, **limits)
            return [_found(b, s, [self.queries[i] for i in q.tolist()]) for b, s, q in found]
        if self.family == "grounding_dino":
            found = self.detector.detect(images, self.queries, threshold=self.score_thresh, **limits)
        elif self.family == "maskrcnn":
            found = self.detector.detect(images, threshold=self.score_thresh, with_masks=self.mask_rows, **limits)
        else:
            found = self.detector.detect(images, threshold=self.score_thresh, **limits)
        return [_found(d.boxes, d.scores, d.labels, d.masks) for d in found]

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            rows = healthy(batch).tolist()

            def infer(chunk: list[int]) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
                found = self._detect([image_at(batch, r) for r in chunk])
                return [self._outputs(f, upscale_factor_at(batch, r)) for f, r in zip(found, chunk)]

            results = infer_or_fail(batch, STAGE, rows, infer)
            batch[COLUMN] = pa.array(
                [results[r][0] if r in results else [] for r in range(len(batch["uri"]))], type=PROPOSALS
            )
            if self.mask_rows:
                append_records(batch, {r: records for r, (_, records) in results.items()})
        return batch

    def _outputs(self, found: dict[str, Any], factor: int) -> tuple[str, list[dict[str, Any]]]:
        """(proposals, mask records): Mask R-CNN rows replace its boxes as prompts."""
        if not self.mask_rows:
            return _proposals(found["boxes"], found["scores"], found["labels"]), []
        records = [
            mask_record(mask, source="maskrcnn", label=label, label_score=score, proposal_score=score)
            for mask, label, score in zip(found["masks"], found["labels"], found["scores"].tolist())
        ]
        return [], records_to_original([r for r in records if r is not None], factor)


def _found(boxes: Any, scores: Any, labels: Sequence[str], masks: Any = None) -> dict[str, Any]:
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, dtype=np.float32).reshape(-1),
        "labels": [str(label) for label in labels],
        "masks": None if masks is None else np.asarray(masks, dtype=bool),
    }


def _proposals(boxes: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"box": box, "score": score, "label": label}
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels, strict=True)
    ]
