"""Embed stage: one L2-normalised CLIP vector per healthy image (zeros for failed rows)."""

from __future__ import annotations

import numpy as np

from samflow.actors.batch import Batch, healthy, image_at, mark_error, run_split_retry, stage_meta
from samflow.models.registry import load_model

STAGE = "embed"


class EmbedStage:
    def __init__(self, model_uri: str, device: str | None = None) -> None:
        self.clip = load_model("clip", model_uri, device=device)
        self.info = {
            "model": model_uri,
            "checkpoint_sha256": self.clip.checkpoint_sha256,
            "dim": self.clip.dim,
        }

    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            rows = healthy(batch).tolist()

            def infer(chunk: list[int]) -> list[np.ndarray]:
                vectors = self.clip.embed_images([image_at(batch, r) for r in chunk])
                return list(vectors.float().cpu().numpy())

            def fail(row: int, exc: BaseException) -> None:
                mark_error(batch, row, STAGE, exc)

            vectors = run_split_retry(rows, infer, on_error=fail)
            out = np.zeros((len(batch["uri"]), self.clip.dim), dtype=np.float32)
            for row, vector in vectors.items():
                out[row] = vector
            batch["embedding"] = out
        return batch
