"""Pure torch + transformers inference shared by every stage and the serving app.

    from samflow.models import load_model
    runner = load_model("sam", "facebook/sam-vit-base")          # or "auto", any model URI

One folder per family (`sam/`, `sam2/`, `sam3/`, `clip/`, `dinov2/`, `detectors/`, `unet/`,
`realesrgan/`), each with its runner and its in-code (`tiny://`, `random://`) config; shared
pre-processing and boxes in `common/`; video tracking in `video/`; the automatic mask generator in
`amg/`. `loading/` holds the family registry, URIs, checkpoints, the model cache, the model
preflight and `models check`. Never imports Ray or Prefect; fsspec only to fetch a model from an object store.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    # lazily, so that importing a subpackage (the torch-free decode and writer tasks import
    # samflow.models.amg's light parts) never pays for torch
    if name == "load_model":
        from samflow.models.loading.registry import load_model

        return load_model
    raise AttributeError(f"module 'samflow.models' has no attribute {name!r}")
