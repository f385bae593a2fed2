"""Exemplar prompts (``labels.exemplars``): the reference images the concepts stage reads.

The graph hands the concepts actor an :class:`ExemplarImages` (built here from the config); the
actor calls it once in its constructor, so reference images are read where the model is, with the
run's storage settings, and never travel through the object store as pixels.
"""

from __future__ import annotations

import numpy as np

from samflow.config import ExemplarConfig, StorageConfig
from samflow.media.decode import decode_image
from samflow.store.storage import read_bytes


class ExemplarImages:
    """``exemplars()`` -> {concept: [(RGB image, (N, 4) xyxy boxes), ...]} (picklable)."""

    def __init__(self, exemplars: dict[str, list[ExemplarConfig]], storage: StorageConfig, max_pixels: int) -> None:
        self.exemplars = {concept: [(e.image, [list(b) for b in e.boxes]) for e in refs]
                          for concept, refs in exemplars.items()}
        self.storage = storage
        self.max_pixels = max_pixels

    def __bool__(self) -> bool:
        return bool(self.exemplars)

    def __call__(self) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        loaded: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for concept, refs in self.exemplars.items():
            for uri, boxes in refs:
                try:
                    image = decode_image(read_bytes(uri, self.storage), self.max_pixels)
                except Exception as exc:  # noqa: BLE001 - a config mistake: say which file
                    raise ValueError(f"labels.exemplars[{concept!r}]: cannot read {uri}: {exc}") from exc
                loaded.setdefault(concept, []).append((image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
        return loaded
