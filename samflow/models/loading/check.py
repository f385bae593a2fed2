"""`samflow models check URI [--family NAME]`: load a model and report what it is.

    check_model("tiny://sam") -> {"family": "sam", "uri": ..., "parameters": 77606,
                                  "dtype": "float32", "device": "cpu", "checkpoint_sha256": "..."}

Remote URIs go through the model cache first. The family comes from `--family`, else from the
registry (`registry.infer_family`). A file or folder also reports `model_sha256`, the value that
pins it (`stages.<name>.model_sha256` or `#sha256=`). Raises `ModelLoadError` with a
user-facing message when the model cannot be loaded.
"""

from __future__ import annotations

from pathlib import Path

from samflow.models.loading.cache import fetch_model
from samflow.models.loading.checkpoint import sha256_pin
from samflow.models.loading.registry import infer_family, load_model, parse_uri


def check_model(uri: str, family: str | None = None) -> dict:
    local = fetch_model(uri)
    family = family or infer_family(local)
    runner = load_model(family, local)
    facts = {
        "family": family,
        "uri": uri,
        "parameters": int(runner.num_parameters),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "device": str(runner.device),
        "checkpoint_sha256": runner.checkpoint_sha256,
        **({"checkpoint_mapping": runner.checkpoint_mapping} if getattr(runner, "checkpoint_mapping", None) else {}),
    }
    source = parse_uri(local)
    if source.kind == "local" and Path(source.location).exists():
        facts["model_sha256"] = sha256_pin(source.location)
    if local != uri:
        facts["local_path"] = local
    return facts


__all__ = ["check_model", "infer_family"]
