"""Concepts stage: every instance of every vocabulary concept per healthy image (SAM 3).

The prompts are ``labels.vocabulary``, with ``labels.exemplars`` boxes added to the concepts that
have some. SAM 3's vision encoder runs once per image and its features serve every prompt; the
vocabulary's text features are computed once per actor. Each instance becomes a mask record
(SA-1B fields) with ``source: "concept"``, ``label`` = the prompt and ``label_score`` = SAM 3's
score (detection x presence), in the original image's coordinates (SAM 3 works at a fixed input
size, so masks are produced at the original size directly, even when upscale enlarged the
pixels). The segment stage, when on, keeps these records and prompts its point grid only where
no concept mask lies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from samflow.actors.batch import (
    Batch,
    arrow_batches,
    healthy,
    image_at,
    infer_or_fail,
    stage_meta,
)
from samflow.models.loading.registry import load_model
from samflow.schemas import masks as mask_column
from samflow.schemas import rle

STAGE = "concepts"
SOURCE = "concept"


class ConceptRunner(Protocol):
    """What the stage needs from a runner (samflow.models.sam3.Sam3Runner)."""

    checkpoint_sha256: str | None

    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[str], *, score_thresh: float,
                mask_thresh: float, max_instances: int, nms_iou: float,
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[list[Any]]: ...

    def set_exemplars(self, exemplars: dict[str, Sequence[tuple[np.ndarray, np.ndarray]]]) -> None: ...


class ConceptsStage:
    """Loads SAM 3 once per actor (or takes a ``runner`` with the same interface); maps batches
    to mask records appended to the row's existing ones."""

    def __init__(
        self,
        model_uri: str,
        vocabulary: Sequence[str],
        score_thresh: float = 0.5,
        mask_thresh: float = 0.5,
        max_instances: int = 100,
        nms_iou: float = 0.5,
        device: str | None = None,
        runner: ConceptRunner | None = None,
        exemplars: Callable[[], dict[str, list[tuple[np.ndarray, np.ndarray]]]] | None = None,
    ) -> None:
        """``exemplars``: called once here; {concept: [(reference image, xyxy boxes)]} visual prompts."""
        if not vocabulary:
            raise ValueError("the concepts stage needs a non-empty labels.vocabulary (its prompts)")
        self.sam3 = runner if runner is not None else load_model("sam3", model_uri, device=device)
        self.vocabulary = list(dict.fromkeys(vocabulary))
        if exemplars is not None:
            self.sam3.set_exemplars(exemplars())
        self.options = dict(score_thresh=score_thresh, mask_thresh=mask_thresh,
                            max_instances=max_instances, nms_iou=nms_iou)
        self.info = {"model": model_uri, "checkpoint_sha256": self.sam3.checkpoint_sha256}

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            rows = healthy(batch).tolist()

            def infer(chunk: list[int]) -> list[list[dict[str, Any]]]:
                sizes = [(int(batch["height"][r]), int(batch["width"][r])) for r in chunk]
                return self.find([image_at(batch, r) for r in chunk], sizes)

            found = infer_or_fail(batch, STAGE, rows, infer)
            mask_column.add(batch, [found.get(r, []) for r in range(len(batch["uri"]))])
        return batch


    def find(self, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]] | None = None
             ) -> list[list[dict[str, Any]]]:
        """Per image, its instances' mask records (best first), at ``sizes`` (default: its own);
        the track stage seeds a video's tracks with these on its seed frames."""
        found = self.sam3.segment(images, self.vocabulary, output_sizes=sizes, **self.options)
        return [concept_records(per_prompt, self.vocabulary) for per_prompt in found]


def concept_records(per_prompt: Sequence[Any], prompts: Sequence[str]) -> list[dict[str, Any]]:
    """SA-1B records of one image's instances (one ConceptInstances per prompt), best first."""
    records = []
    for prompt, inst in zip(prompts, per_prompt, strict=True):
        for k in range(len(inst.scores)):
            x0, y0, x1, y1 = (float(v) for v in inst.mask_boxes[k])
            h, w = inst.segmentations[k]["size"]
            records.append({
                "segmentation": inst.segmentations[k],
                "bbox": [x0, y0, x1 - x0, y1 - y0],  # SAM's convention: inclusive max
                "area": int(inst.areas[k]),
                "predicted_iou": None,
                "stability_score": None,
                "point_coords": [],
                "crop_box": [0.0, 0.0, float(w), float(h)],
                "source": SOURCE,
                "proposal_score": None,
                "label": prompt,
                "label_score": float(inst.scores[k]),
            })
    records.sort(key=lambda r: -r["label_score"])
    return records


def concept_coverage(batch: Batch, row: int, factor: int = 1) -> np.ndarray | None:
    """(H*factor, W*factor) bool union of the row's concept masks (in the pixels a later stage
    sees when upscale enlarged them ``factor`` times), or None without any."""
    column = batch.get(mask_column.COLUMN)
    if column is None:
        return None
    found = [rle.decode(r["segmentation"]) for r in mask_column.records_at(column, row) if r["source"] == SOURCE]
    if not found:
        return None
    union = np.logical_or.reduce(found)
    if factor > 1:
        union = union.repeat(factor, axis=0).repeat(factor, axis=1)
    return union
