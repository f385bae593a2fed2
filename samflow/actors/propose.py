"""Propose stage: OWLv2 boxes per healthy image, handed to segment as box prompts.

Adds ``proposals_json`` per row: ``{"boxes": [[x0, y0, x1, y1], ...], "scores": [...]}`` in the
pixels the stage saw (upscaled ones when upscale ran: segment works on those same pixels), best
first. Rows that failed here or earlier get no boxes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from samflow.actors.batch import (
    Batch,
    arrow_batches,
    healthy,
    image_at,
    infer_or_fail,
    object_column,
    stage_meta,
)
from samflow.models.registry import load_model

STAGE = "propose"
NO_PROPOSALS = json.dumps({"boxes": [], "scores": []})


class ProposeStage:
    """Loads OWLv2 once per actor. Class-agnostic objectness boxes, or, with ``queries``,
    open-vocabulary boxes for those text queries (their best query score is the box's score)."""

    def __init__(
        self,
        model_uri: str,
        max_boxes: int = 50,
        score_thresh: float = 0.1,
        nms_iou: float = 0.5,
        queries: Sequence[str] = (),
        device: str | None = None,
    ) -> None:
        self.owl = load_model("owlv2", model_uri, device=device)
        self.max_boxes = max_boxes
        self.score_thresh = score_thresh
        self.nms_iou = nms_iou
        self.queries = list(queries)
        self.info = {"model": model_uri, "checkpoint_sha256": self.owl.checkpoint_sha256}

    def _boxes(self, images: list[np.ndarray]) -> list[tuple[Any, Any]]:
        if self.queries:
            found = self.owl.detect(
                images, self.queries, threshold=self.score_thresh,
                max_boxes=self.max_boxes, nms_iou=self.nms_iou,
            )
            return [(boxes, scores) for boxes, scores, _ in found]
        return self.owl.propose(
            images, max_boxes=self.max_boxes, min_score=self.score_thresh, nms_iou=self.nms_iou
        )

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            rows = healthy(batch).tolist()

            def infer(chunk: list[int]) -> list[str]:
                found = self._boxes([image_at(batch, r) for r in chunk])
                return [_proposals_json(boxes, scores) for boxes, scores in found]

            proposals = infer_or_fail(batch, STAGE, rows, infer)
            batch["proposals_json"] = object_column(
                [proposals.get(r, NO_PROPOSALS) for r in range(len(batch["uri"]))]
            )
        return batch


def _proposals_json(boxes: Any, scores: Any) -> str:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    return json.dumps({"boxes": boxes.tolist(), "scores": scores.tolist()})


def proposals_at(batch: Batch, row: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The row's (boxes (N, 4) xyxy, scores (N,)), or None when propose did not run."""
    column = batch.get("proposals_json")
    if column is None:
        return None
    parsed = json.loads(column[row])
    boxes = np.asarray(parsed["boxes"], dtype=np.float64).reshape(-1, 4)
    return boxes, np.asarray(parsed["scores"], dtype=np.float32).reshape(-1)
