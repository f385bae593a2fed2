"""Epoch checkpoints (what a resumed run needs) and the finished model directory.

A checkpoint directory holds the trainable weights (``trainable.safetensors``: the base model
is loaded again from its URI), the optimizer state (``optimizer.pt``, plain tensors, read back
with ``weights_only=True``) and ``progress.json`` (epochs done, per-epoch metrics).

The model directory is what `save_pretrained` writes (``config.json``, ``model.safetensors``),
the base's ``preprocessor_config.json`` when it had one, and ``samflow.json``: the lineage.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from samflow.config import StorageConfig
from samflow.store.storage import filesystem

TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
PROGRESS = "progress.json"
LINEAGE = "samflow.json"
PREPROCESSOR = "preprocessor_config.json"


@dataclass
class Progress:
    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why training ended before its last epoch ("max_minutes")
    resumed_at: list[int] = field(default_factory=list)  # epochs done when each resume started


def save_checkpoint(directory: Path, state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    progress: Progress) -> None:
    save_file(state, str(directory / TRAINABLE))
    torch.save(optimizer.state_dict(), directory / OPTIMIZER)
    (directory / PROGRESS).write_text(json.dumps(asdict(progress), indent=1))


def read_progress(directory: Path) -> Progress:
    return Progress(**json.loads((directory / PROGRESS).read_text()))


def load_trainable(directory: Path, model: nn.Module) -> None:
    """Put a checkpoint's trainable weights into ``model`` (same parts, same names)."""
    state = load_file(str(directory / TRAINABLE))
    missing = set(state) - {name for name, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"checkpoint weights the model does not have: {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)


def load_optimizer(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER, map_location="cpu", weights_only=True))


def write_model_dir(model: nn.Module, base_dir: Path | None, lineage: dict[str, Any], into: Path) -> None:
    """A SamModel in the transformers layout (safetensors) with its lineage, into ``into``."""
    model.save_pretrained(str(into), safe_serialization=True)
    if base_dir is not None and (base_dir / PREPROCESSOR).is_file():
        shutil.copy(base_dir / PREPROCESSOR, into / PREPROCESSOR)
    (into / LINEAGE).write_text(json.dumps(lineage, indent=1, sort_keys=True))


def publish(local: Path, out_uri: str, storage: StorageConfig) -> None:
    """Copy a finished model directory to ``out_uri`` (local or object store). The lineage goes
    last: a directory with ``samflow.json`` is whole."""
    fs, root = filesystem(out_uri, storage)
    fs.makedirs(root, exist_ok=True)
    files = sorted(p for p in local.iterdir() if p.is_file())
    for path in sorted(files, key=lambda p: p.name == LINEAGE):
        fs.put_file(str(path), f"{root.rstrip('/')}/{path.name}")


def staging_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="samflow-model-"))
