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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pydantic import Field

from samflow.actors.batch import (
    Batch,
    arrow_batches,
    healthy,
    image_at,
    infer_or_fail,
    stage_meta,
)
from samflow.actors.stage import StageConfig, StageContext, context_or_default
from samflow.schemas import masks as mask_column
from samflow.schemas import rle

if TYPE_CHECKING:
    from samflow.config import RunConfig

STAGE = "concepts"
SOURCE = mask_column.CONCEPT_SOURCE


class ConceptsConfig(StageConfig):
    """SAM 3: every instance of each ``labels.vocabulary`` concept (the prompts), labelled."""

    enabled: bool = Field(False, description="Off by default; needs a non-empty labels.vocabulary.")
    model: str = Field(
        "facebook/sam3",
        description="SAM 3 model URI (the Hub repository is gated: accept its licence, set HF_TOKEN).",
    )
    batch_size: int = Field(4, ge=1, description="Images per SAM 3 call (every prompt of each).")

    score_thresh: float = Field(
        0.5, ge=0.0, le=1.0, description="Keep instances whose score (detection x presence) is above this."
    )
    mask_thresh: float = Field(0.5, gt=0.0, lt=1.0, description="Mask probability above which a pixel is in.")
    max_instances: int = Field(100, ge=1, description="At most this many instances per concept and image.")
    nms_iou: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Instances of one concept overlapping a better one above this box IoU are duplicates "
        "(instances of different concepts are all kept).",
    )


class ConceptRunner(Protocol):
    """What the stage needs from a runner (samflow.models.sam3.runner.Sam3Runner)."""

    checkpoint_sha256: str | None

    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[str], *, score_thresh: float,
                mask_thresh: float, max_instances: int, nms_iou: float,
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[list[Any]]: ...

    def set_exemplars(self, exemplars: dict[str, Sequence[tuple[np.ndarray, np.ndarray]]]) -> None: ...


class ConceptsStage:
    """Loads SAM 3 once per actor (or takes a ``runner`` with the same interface); maps batches
    to mask records appended to the row's existing ones."""

    def __init__(
        self, config: ConceptsConfig, context: StageContext | None = None, device: str | None = None,
        runner: ConceptRunner | None = None,
    ) -> None:
        """The prompts are the run's ``labels.vocabulary``; ``labels.exemplars`` boxes are read once here."""
        context = context_or_default(context)
        vocabulary = context.run.labels.vocabulary
        if not vocabulary:
            raise ValueError("the concepts stage needs a non-empty labels.vocabulary (its prompts)")
        if runner is None:
            from samflow.models.loading.registry import load_model

            runner = load_model("sam3", config.model, device=device)
        self.sam3 = runner
        self.vocabulary = list(dict.fromkeys(vocabulary))
        if context.run.labels.exemplars:
            self.sam3.set_exemplars(read_exemplars(context))
        self.options = config.model_dump(include={"score_thresh", "mask_thresh", "max_instances", "nms_iou"})
        self.info = {"model": config.model, "checkpoint_sha256": self.sam3.checkpoint_sha256}

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
            h, w = inst.segmentations[k]["size"]
            records.append({
                "segmentation": inst.segmentations[k],
                "bbox": rle.to_bbox(inst.segmentations[k]),
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


def read_exemplars(context: StageContext) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{concept: [(RGB reference image, (N, 4) xyxy boxes), ...]} of ``labels.exemplars``, read
    where the model is, with the run's storage settings and input limits."""
    from samflow.media.image import decode_image

    run: RunConfig = context.run
    store = context.require_store("labels.exemplars")
    loaded: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for concept, refs in run.labels.exemplars.items():
        for ref in refs:
            try:
                image = decode_image(store.read(ref.image), run.input.max_pixels)
            except Exception as exc:  # noqa: BLE001 - a config mistake: say which file
                raise ValueError(f"labels.exemplars[{concept!r}]: cannot read {ref.image}: {exc}") from exc
            boxes = np.asarray([list(b) for b in ref.boxes], dtype=np.float32).reshape(-1, 4)
            loaded.setdefault(concept, []).append((image, boxes))
    return loaded
