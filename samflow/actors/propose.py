"""Propose stage: OWLv2 boxes per healthy image, handed to segment as box prompts.

Adds ``proposals`` per row, an Arrow ``list<struct<box: [x0, y0, x1, y1], score>>`` in the
pixels the stage saw (upscaled ones when upscale ran: segment works on those same pixels), best
first. Rows that failed here or earlier get no boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from samflow.actors.batch import (
    Batch,
    arrow_batches,
    healthy,
    image_at,
    infer_or_fail,
    stage_meta,
)
from samflow.models.registry import load_model

STAGE = "propose"
COLUMN = "proposals"
PROPOSAL = pa.struct([("box", pa.list_(pa.float32(), 4)), ("score", pa.float32())])


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

            def infer(chunk: list[int]) -> list[list[dict[str, Any]]]:
                found = self._boxes([image_at(batch, r) for r in chunk])
                return [_proposals(boxes, scores) for boxes, scores in found]

            proposals = infer_or_fail(batch, STAGE, rows, infer)
            batch[COLUMN] = pa.array(
                [proposals.get(r, []) for r in range(len(batch["uri"]))], type=pa.list_(PROPOSAL)
            )
        return batch


def _proposals(boxes: Any, scores: Any) -> list[dict[str, Any]]:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    return [{"box": box, "score": score} for box, score in zip(boxes.tolist(), scores.tolist(), strict=True)]


def proposals_at(batch: Batch, row: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The row's (boxes (N, 4) xyxy, scores (N,)), or None when propose did not run."""
    column = batch.get(COLUMN)
    if column is None:
        return None
    found = column[row].values
    if found is None or len(found) == 0:
        return np.zeros((0, 4), np.float64), np.zeros(0, np.float32)
    boxes = found.field("box").flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, 4)
    return boxes, found.field("score").to_numpy(zero_copy_only=False).astype(np.float32)
