"""Embed stage: CLIP vectors and zero-shot labels.

Per healthy row: one L2-normalised vector of the whole image (``embedding``; zeros for failed
rows). When a stage emitted masks (the ``masks`` column, ``samflow.schemas.masks``), each mask's
bounding-box crop (cut from the pixels the stage sees, upscaled ones when upscale ran) is embedded
too, and the mask gets ``label`` and ``label_score`` (zero-shot over the vocabulary with prompt
ensembling; only with a non-empty vocabulary) and, with ``mask_embeddings``, its own unit
``embedding`` (a fixed-size float32 list).

Concept masks (``source: "concept"``, labelled by SAM 3) keep their label and score; CLIP
verifies them instead: ``verified`` (CLIP's top label over the vocabulary is SAM 3's) and
``verify_score`` (CLIP's probability of SAM 3's label). So do the masks of a video track that a
concept seeded (a ``track_id`` and a label: the track stage labels tracks only from SAM 3), so
a track's rows keep the label its tracks/ row has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
from samflow.actors.stage import StageConfig, StageContext, context_or_default
from samflow.schemas import masks as mask_column

STAGE = "embed"


class EmbedConfig(StageConfig):
    """CLIP: one vector per image, labels (labels.vocabulary) and optional vectors per mask."""

    model: str = Field("openai/clip-vit-base-patch32", description="CLIP (or SigLIP) model URI.")
    batch_size: int = Field(16, ge=1, description="Images per CLIP call.")

    mask_embeddings: bool = Field(
        False, description="Also write one CLIP vector per mask crop (annotations.embedding)."
    )
    crops_per_batch: int = Field(64, ge=1, description="Mask crops per CLIP call.")
    models: list[Literal["clip", "dinov2"]] = Field(
        default_factory=lambda: ["clip"],
        description="Embedding models: clip = `model` (vectors, labels, mask vectors -> embeddings/); "
        "dinov2 = `dinov2_model` (one image vector per image -> embeddings/dinov2/, same columns; "
        "the embeddings table then has one row per image per model).",
    )
    dinov2_model: str = Field(
        "facebook/dinov2-base", description="DINOv2 model URI used when `models` lists dinov2."
    )

    def runs(self, run: Any) -> bool:
        return self.enabled and "clip" in self.models


def mask_crop(image: np.ndarray, bbox: Sequence[float], factor: int) -> np.ndarray:
    """The pixels under a mask's COCO [x, y, w, h] box (original coordinates), cut from ``image``
    which is the original enlarged ``factor`` times; at least one pixel."""
    import torch  # not at import time: the config imports this module in torch-free workers
    from torchvision.ops import box_convert, clip_boxes_to_image

    height, width = image.shape[:2]
    xyxy = box_convert(torch.tensor([list(bbox)], dtype=torch.float64) * factor, "xywh", "xyxy")
    x0, y0, x1, y1 = clip_boxes_to_image(xyxy, (height, width))[0].tolist()
    left, top = min(math.floor(x0), width - 1), min(math.floor(y0), height - 1)
    right, bottom = max(math.ceil(x1), left + 1), max(math.ceil(y1), top + 1)
    return np.ascontiguousarray(image[top:bottom, left:right])


class EmbedStage:
    """CLIP once per actor; labels come from the run's ``labels`` section (vocabulary, templates)."""

    def __init__(self, config: EmbedConfig, context: StageContext | None = None, device: str | None = None) -> None:
        from samflow.models.loading.registry import load_model

        labels = context_or_default(context).run.labels
        self.clip = load_model("auto", config.model, task="embed", device=device)
        self.vocabulary = list(labels.vocabulary)
        self._index = {label: k for k, label in enumerate(self.vocabulary)}
        self.templates = list(labels.templates) or ["{}"]
        self.mask_embeddings = config.mask_embeddings
        self.crops_per_batch = config.crops_per_batch
        self.info = {
            "model": config.model,
            "checkpoint_sha256": self.clip.checkpoint_sha256,
            "dim": self.clip.dim,
        }

    @property
    def per_mask(self) -> bool:
        return bool(self.vocabulary) or self.mask_embeddings

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            n = len(batch["uri"])
            rows = healthy(batch).tolist()
            masks = batch.get(mask_column.COLUMN) if self.per_mask else None
            boxes = mask_column.boxes_per_row(masks) if masks is not None else None

            def infer(chunk: list[int]) -> list[tuple[np.ndarray, MaskOutputs | None]]:
                images = [image_at(batch, r) for r in chunk]
                vectors = list(self.clip.embed_images(images).float().numpy())
                if boxes is None:
                    return [(vector, None) for vector in vectors]
                factors = [upscale_factor_at(batch, r) for r in chunk]
                per_row = self._embed_masks(images, factors, [boxes[r] for r in chunk])
                return list(zip(vectors, per_row))

            results = infer_or_fail(batch, STAGE, rows, infer)
            out = np.zeros((n, self.clip.dim), dtype=np.float32)
            for row, (vector, _) in results.items():
                out[row] = vector
            batch["embedding"] = out
            if masks is not None:
                batch[mask_column.COLUMN] = self._with_mask_fields(masks, results, n)
        return batch

    def _embed_masks(
        self, images: list[np.ndarray], factors: list[int], boxes: list[np.ndarray]
    ) -> list[MaskOutputs]:
        """Per row: its masks' crop vectors and, with a vocabulary, their zero-shot labels."""
        crops = [
            mask_crop(image, bbox, factor)
            for image, factor, row_boxes in zip(images, factors, boxes)
            for bbox in row_boxes
        ]
        if not crops:
            return [MaskOutputs.none(self.clip.dim, len(self.vocabulary)) for _ in images]
        import torch

        vectors = torch.cat(
            [
                self.clip.embed_images(crops[start : start + self.crops_per_batch]).float()
                for start in range(0, len(crops), self.crops_per_batch)
            ]
        )
        probs = np.zeros((len(crops), len(self.vocabulary)), np.float32)
        if self.vocabulary:
            probs = self.clip.label_probabilities(vectors, self.vocabulary, self.templates).float().numpy()
        vectors_np = vectors.numpy()
        out, start = [], 0
        for row_boxes in boxes:
            end = start + len(row_boxes)
            out.append(MaskOutputs(probs[start:end], vectors_np[start:end]))
            start = end
        return out

    def _with_mask_fields(self, masks: Any, results: dict[int, Any], n: int) -> Any:
        """The masks column with label / label_score / embedding set for every mask (null for
        masks of rows this stage did not annotate: they failed, here or earlier)."""
        counts = mask_column.counts(masks)
        if not counts.sum():
            return masks
        per_row = [results[r][1] if r in results else None for r in range(n)]
        valid = np.repeat([found is not None for found in per_row], counts)
        outputs = [found or MaskOutputs.none(self.clip.dim, len(self.vocabulary), int(k))
                   for found, k in zip(per_row, counts)]
        fields: dict[str, Any] = {}
        if self.vocabulary:
            probs = np.concatenate([found.probs for found in outputs])
            fields.update(self._labels_and_verdicts(masks, probs, valid))
        if self.mask_embeddings:
            vectors = np.concatenate([found.vectors for found in outputs])
            fields["embedding"] = mask_column.vectors(vectors, valid)
        return mask_column.with_fields(masks, **fields) if fields else masks


    def _labels_and_verdicts(self, masks: Any, probs: np.ndarray, valid: np.ndarray) -> dict[str, pa.Array]:
        """Per mask (flat order; ``probs`` (masks, V) CLIP's softmax over the vocabulary): a
        zero-shot label for class-agnostic masks; SAM 3's label kept and judged for concept ones."""
        top = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        labelled_track = _present(masks, "track_id") & _present(masks, "label")
        concept = valid & ((mask_column.field(masks, "source").to_numpy(zero_copy_only=False) == mask_column.CONCEPT_SOURCE)
                           | labelled_track)
        own_labels = mask_column.field(masks, "label").to_pylist()
        own = np.array([self._index.get(label, -1) for label in own_labels], np.int64)
        known = own >= 0
        own_prob = np.where(known, probs[np.arange(len(probs)), np.maximum(own, 0)], 0.0)
        labels = [own_labels[k] if concept[k] else (self.vocabulary[top[k]] if valid[k] else None)
                  for k in range(len(top))]
        top_prob = probs.max(axis=1) if len(probs) else np.zeros(0, np.float32)
        old_scores = mask_column.field(masks, "label_score").to_numpy(zero_copy_only=False)
        scores = np.where(concept, old_scores, top_prob)
        return {
            "label": pa.array(labels, pa.string()),
            "label_score": pa.array(scores, pa.float32(), mask=~valid),
            "verified": pa.array(known & (own == top), pa.bool_(), mask=~concept),
            "verify_score": pa.array(own_prob, pa.float32(), mask=~concept),
        }


def _present(masks: Any, name: str) -> np.ndarray:
    """Per mask: whether field ``name`` is set."""
    return mask_column.field(masks, name).is_valid().to_numpy(zero_copy_only=False)


@dataclass
class MaskOutputs:
    """One row's per-mask outputs of the embed stage, in mask order: CLIP's probabilities over
    the vocabulary (masks, V) and the crops' unit vectors (masks, dim)."""

    probs: np.ndarray
    vectors: np.ndarray

    @classmethod
    def none(cls, dim: int, vocabulary: int, k: int = 0) -> "MaskOutputs":
        return cls(np.zeros((k, vocabulary), np.float32), np.zeros((k, dim), np.float32))
