"""Second embedding model stage: one self-supervised image vector per healthy row (DINOv2).

Adds ``embedding_<family>`` (L2-normalised float32, zeros for failed rows) and
``embedding_<family>_model`` (the model URI) columns; the writer turns them into the
``embeddings/<family>/`` part of the embeddings table (one row per image per model, same columns
as CLIP's rows in ``embeddings/``: a second model has its own vector size, and a Parquet column of
fixed-size vectors holds one size).
"""

from __future__ import annotations

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
from samflow.actors.embed import EmbedConfig
from samflow.actors.stage import StageContext

FEATURE_FAMILIES = ("dinov2",)


def runs_dinov2(embed: EmbedConfig) -> bool:
    """The DINOv2 pool runs beside CLIP's with the embed section's pool settings."""
    return embed.enabled and "dinov2" in embed.models


class FeatureEmbedStage:
    """The embed section's second model (``dinov2_model``), loaded once per actor."""

    def __init__(
        self, config: EmbedConfig, context: StageContext | None = None, device: str | None = None,
        family: str = "dinov2",
    ) -> None:
        from samflow.models.loading.registry import load_model

        if family not in FEATURE_FAMILIES:
            raise ValueError(f"feature embeddings come from {', '.join(FEATURE_FAMILIES)}, not {family!r}")
        self.family = family
        model_uri = self.model_uri = config.dinov2_model
        self.runner = load_model(family, model_uri, task="features", device=device)
        self.stage = f"embed_{family}"
        self.info = {"model": model_uri, "checkpoint_sha256": self.runner.checkpoint_sha256, "dim": self.runner.dim}

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, self.stage, self.info):
            rows = healthy(batch).tolist()

            def infer(chunk: list[int]) -> list[np.ndarray]:
                return list(self.runner.embed_images([image_at(batch, r) for r in chunk]).float().numpy())

            vectors = infer_or_fail(batch, self.stage, rows, infer)
            out = np.zeros((len(batch["uri"]), self.runner.dim), dtype=np.float32)
            for row, vector in vectors.items():
                out[row] = vector
            batch[f"embedding_{self.family}"] = out
            batch[f"embedding_{self.family}_model"] = object_column([self.info["model"]] * len(batch["uri"]))
        return batch
