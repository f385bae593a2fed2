"""Embed stage: CLIP vectors and zero-shot labels.

Per healthy row: one L2-normalised vector of the whole image (``embedding``; zeros for failed
rows). When a stage emitted masks (the ``masks`` column, ``samflow.schemas.masks``), each mask's
bounding-box crop (cut from the pixels the stage sees, upscaled ones when upscale ran) is embedded
too, and the mask gets ``label`` and ``label_score`` (zero-shot over the vocabulary with prompt
ensembling; only with a non-empty vocabulary) and, with ``mask_embeddings``, its own unit
``embedding`` (a fixed-size float32 list).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from samflow.actors.batch import (
    Batch,
    arrow_batches,
    healthy,
    image_at,
    infer_or_fail,
    stage_meta,
    upscale_factor_at,
)
from samflow.models.registry import load_model
from samflow.schemas import masks as mask_column

STAGE = "embed"


def mask_crop(image: np.ndarray, bbox: Sequence[float], factor: int) -> np.ndarray:
    """The pixels under a mask's [x, y, w, h] box (original coordinates, inclusive max, SAM's
    convention), cut from ``image`` which is the original enlarged ``factor`` times."""
    height, width = image.shape[:2]
    x, y, w, h = (float(v) for v in bbox)
    x0 = min(max(int(np.floor(x * factor)), 0), width - 1)
    y0 = min(max(int(np.floor(y * factor)), 0), height - 1)
    x1 = min(max(int(np.ceil((x + w + 1) * factor)), x0 + 1), width)
    y1 = min(max(int(np.ceil((y + h + 1) * factor)), y0 + 1), height)
    return np.ascontiguousarray(image[y0:y1, x0:x1])


class EmbedStage:
    def __init__(
        self,
        model_uri: str,
        vocabulary: Sequence[str] = (),
        templates: Sequence[str] = (),
        mask_embeddings: bool = False,
        crops_per_batch: int = 64,
        device: str | None = None,
    ) -> None:
        self.clip = load_model("clip", model_uri, device=device)
        self.vocabulary = list(vocabulary)
        self.templates = list(templates) or ["{}"]
        self.mask_embeddings = mask_embeddings
        self.crops_per_batch = crops_per_batch
        self.info = {
            "model": model_uri,
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
            return [MaskOutputs.none(self.clip.dim) for _ in images]
        vectors = torch.cat(
            [
                self.clip.embed_images(crops[start : start + self.crops_per_batch]).float()
                for start in range(0, len(crops), self.crops_per_batch)
            ]
        )
        labels, scores = [], np.zeros(len(crops), np.float32)
        if self.vocabulary:
            indices, top = self.clip.zero_shot(vectors, self.vocabulary, self.templates)
            labels, scores = [self.vocabulary[i] for i in indices.tolist()], top.float().numpy()
        vectors_np = vectors.numpy()
        out, start = [], 0
        for row_boxes in boxes:
            end = start + len(row_boxes)
            out.append(MaskOutputs(labels[start:end], scores[start:end], vectors_np[start:end]))
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
        outputs = [found or MaskOutputs.none(self.clip.dim, int(k)) for found, k in zip(per_row, counts)]
        fields: dict[str, Any] = {}
        if self.vocabulary:
            labels = [label for found in per_row if found is not None for label in found.labels]
            named = iter(labels)
            fields["label"] = pa.array([next(named) if ok else None for ok in valid], pa.string())
            scores = np.concatenate([found.scores for found in outputs])
            fields["label_score"] = pa.array(scores, pa.float32(), mask=~valid)
        if self.mask_embeddings:
            vectors = np.concatenate([found.vectors for found in outputs])
            fields["embedding"] = mask_column.vectors(vectors, valid)
        return mask_column.with_fields(masks, **fields) if fields else masks


@dataclass
class MaskOutputs:
    """One row's per-mask outputs of the embed stage, in mask order."""

    labels: list[str]
    scores: np.ndarray
    vectors: np.ndarray

    @classmethod
    def none(cls, dim: int, k: int = 0) -> "MaskOutputs":
        return cls([], np.zeros(k, np.float32), np.zeros((k, dim), np.float32))
