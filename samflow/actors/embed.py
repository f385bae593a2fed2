"""Embed stage: CLIP vectors and zero-shot labels.

Per healthy row: one L2-normalised vector of the whole image (``embedding``; zeros for failed
rows). When segment ran, each mask's bounding-box crop (cut from the pixels the stage sees,
upscaled ones when upscale ran) is embedded too, and the mask record in ``annotations_json`` gets
``label`` and ``label_score`` (zero-shot over the vocabulary with prompt ensembling; only with a
non-empty vocabulary) and, with ``mask_embeddings``, its own unit ``embedding``.

Concept masks (``source: "concept"``, labelled by SAM 3) keep their label; CLIP verifies them
instead: ``verified`` (CLIP's top label over the vocabulary is SAM 3's) and ``verify_score``
(CLIP's probability of SAM 3's label).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from samflow.actors.batch import (
    Batch,
    healthy,
    image_at,
    infer_or_fail,
    object_column,
    stage_meta,
    upscale_factor_at,
)
from samflow.actors.concepts import SOURCE as CONCEPT_SOURCE
from samflow.models.registry import load_model

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
        self._index = {label: k for k, label in enumerate(self.vocabulary)}
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

    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            rows = healthy(batch).tolist()
            annotations = batch.get("annotations_json") if self.per_mask else None

            def infer(chunk: list[int]) -> list[tuple[np.ndarray, str | None]]:
                images = [image_at(batch, r) for r in chunk]
                vectors = list(self.clip.embed_images(images).float().numpy())
                if annotations is None:
                    return [(vector, None) for vector in vectors]
                records = [json.loads(annotations[r]) for r in chunk]
                factors = [upscale_factor_at(batch, r) for r in chunk]
                self._annotate_masks(images, factors, records)
                return [(vector, json.dumps(recs)) for vector, recs in zip(vectors, records)]

            results = infer_or_fail(batch, STAGE, rows, infer)
            out = np.zeros((len(batch["uri"]), self.clip.dim), dtype=np.float32)
            for row, (vector, _) in results.items():
                out[row] = vector
            batch["embedding"] = out
            if annotations is not None:
                batch["annotations_json"] = object_column(
                    [results[r][1] if r in results else "[]" for r in range(len(batch["uri"]))]
                )
        return batch

    def _annotate_masks(
        self, images: list[np.ndarray], factors: list[int], records: list[list[dict[str, Any]]]
    ) -> None:
        """Add label / label_score / embedding to every record, in place."""
        crops = [
            mask_crop(image, record["bbox"], factor)
            for image, factor, recs in zip(images, factors, records)
            for record in recs
        ]
        if not crops:
            return
        vectors = torch.cat(
            [
                self.clip.embed_images(crops[start : start + self.crops_per_batch]).float()
                for start in range(0, len(crops), self.crops_per_batch)
            ]
        )
        flat = [record for recs in records for record in recs]
        if self.vocabulary:
            probs = self.clip.label_probabilities(vectors, self.vocabulary, self.templates)
            for record, row in zip(flat, probs):
                self._label_or_verify(record, row)
        for k, record in enumerate(flat):
            if self.mask_embeddings:
                record["embedding"] = vectors[k].numpy().tolist()

    def _label_or_verify(self, record: dict[str, Any], probs: torch.Tensor) -> None:
        """A zero-shot label for a class-agnostic mask; a verdict on a concept mask's label."""
        top = int(probs.argmax())
        if record.get("source") != CONCEPT_SOURCE:
            record["label"], record["label_score"] = self.vocabulary[top], float(probs[top])
            return
        own = self._index.get(record.get("label"))
        record["verified"] = own is not None and own == top
        record["verify_score"] = float(probs[own]) if own is not None else 0.0
