"""A checkpoint file's family from its keys, for folders and files without a config.json: Meta's
SAM / SAM 2 checkpoints, else Real-ESRGAN generators."""

from __future__ import annotations

from pathlib import Path

from samflow.models.loading.checkpoint import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, weight_files
from samflow.models.loading.registry import ModelLoadError


def family_of_checkpoint(uri: str, path: Path | None) -> str:
    checkpoint = _single_checkpoint(path) if path is not None else None
    if checkpoint is None:
        raise ModelLoadError(f"{uri}: cannot tell the model family (no config.json, no checkpoint file); pass --family")
    from samflow.models.loading.meta_checkpoints import is_meta_file
    from samflow.models.realesrgan.arch import infer_architecture
    from samflow.models.realesrgan.runner import load_generator_state

    if is_meta_file(checkpoint):  # Meta's SAM (.pth) / SAM 2 (.pt): the keys say which
        layout = _meta_layout_or_none(checkpoint)
        if layout is not None:
            return layout
    try:
        infer_architecture(load_generator_state(checkpoint))
    except ValueError:
        raise ModelLoadError(f"{uri}: checkpoint {checkpoint.name} is not a known architecture; pass --family") from None
    return "realesrgan"


def _single_checkpoint(path: Path) -> Path | None:
    if path.is_file() and path.suffix in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES):
        return path
    if path.is_dir():
        files = weight_files(path)
        return files[0] if len(files) == 1 else None
    return None


def _meta_layout_or_none(path: Path) -> str | None:
    from samflow.models.loading.checkpoint import UnsafeCheckpointError
    from samflow.models.loading.meta_checkpoints import read_meta_checkpoint

    try:
        return read_meta_checkpoint(path)[1]
    except UnsafeCheckpointError as exc:
        raise ModelLoadError(str(exc)) from None
