"""`samflow models check URI [--family NAME]`: load a model and report what it is.

    check_model("tiny://sam") -> {"family": "sam", "uri": ..., "parameters": 77606,
                                  "dtype": "float32", "device": "cpu", "checkpoint_sha256": "..."}

The family comes from `--family`, else from the URI (`tiny://<family>`), else from the model's
config.json `model_type`, else from a checkpoint file's keys (Real-ESRGAN generators).
Raises `ModelLoadError` with a user-facing message when the model cannot be loaded.
"""

from __future__ import annotations

from pathlib import Path

from samflow.models.loading.checkpoint import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    weight_files,
)
from samflow.models.loading.registry import (
    FAMILIES,
    ModelLoadError,
    load_model,
    parse_uri,
)

# transformers `model_type` -> samflow family
_MODEL_TYPES = {
    "sam": "sam",
    "sam2": "sam2",
    "sam2_video": "sam2",
    "sam3": "sam3",
    "sam3_video": "sam3",
    "sam3_tracker": "sam3",
    "sam3_tracker_video": "sam3",
    "clip": "clip",
    "siglip": "siglip",
    "dinov2": "dinov2",
    "owlv2": "owlv2",
    "maskrcnn": "maskrcnn",
    "rt_detr": "detr",
    "rt_detr_v2": "detr",
    "d_fine": "detr",
    "unet": "unet",
    "grounding-dino": "grounding_dino",
    "mm-grounding-dino": "grounding_dino",
}


def check_model(uri: str, family: str | None = None) -> dict:
    family = family or infer_family(uri)
    runner = load_model(family, uri)
    return {
        "family": family,
        "uri": uri,
        "parameters": int(runner.num_parameters),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "device": str(runner.device),
        "checkpoint_sha256": runner.checkpoint_sha256,
        **({"checkpoint_mapping": runner.checkpoint_mapping} if getattr(runner, "checkpoint_mapping", None) else {}),
    }


def infer_family(uri: str) -> str:
    source = parse_uri(uri)
    if source.in_code:
        if source.location not in FAMILIES:
            raise ModelLoadError(
                f"unknown {source.kind} model {uri}; expected {source.kind}://<family> with family in {', '.join(FAMILIES)}"
            )
        return source.location
    from samflow.models.loading.hf import local_model_dir, read_json

    path = local_model_dir(source)
    config_path = path / "config.json" if path.is_dir() else None
    if config_path is not None and config_path.is_file():
        model_type = read_json(config_path).get("model_type", "")
        if model_type in _MODEL_TYPES:
            return _MODEL_TYPES[model_type]
        raise ModelLoadError(f"{uri}: model_type {model_type!r} is not a samflow family; pass --family")
    if _single_checkpoint(path) is not None:
        return _family_of_checkpoint(uri, _single_checkpoint(path))
    raise ModelLoadError(f"{uri}: cannot tell the model family (no config.json, no checkpoint file); pass --family")


def _single_checkpoint(path: Path) -> Path | None:
    if path.is_file() and path.suffix in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES):
        return path
    if path.is_dir():
        files = weight_files(path)
        return files[0] if len(files) == 1 else None
    return None


def _family_of_checkpoint(uri: str, path: Path) -> str:
    from samflow.models.realesrgan.arch import infer_architecture
    from samflow.models.loading.meta_checkpoints import is_meta_file
    from samflow.models.realesrgan.runner import load_generator_state

    if is_meta_file(path):  # Meta's SAM (.pth) / SAM 2 (.pt): the keys say which
        layout = _meta_layout_or_none(path)
        if layout is not None:
            return layout

    try:
        infer_architecture(load_generator_state(path))
    except ValueError:
        raise ModelLoadError(f"{uri}: checkpoint {path.name} is not a known architecture; pass --family") from None
    return "realesrgan"


def _meta_layout_or_none(path: Path) -> str | None:
    from samflow.models.loading.checkpoint import UnsafeCheckpointError
    from samflow.models.loading.meta_checkpoints import read_meta_checkpoint

    try:
        return read_meta_checkpoint(path)[1]
    except UnsafeCheckpointError as exc:
        raise ModelLoadError(str(exc)) from None


__all__ = ["check_model", "infer_family"]
