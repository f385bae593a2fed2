"""Safe checkpoint reading and hashing.

Rules (docs/architecture.md, "Layout"):
- safetensors files are preferred and read with `safetensors.torch.load_file`;
- anything else is read with `torch.load(weights_only=True)`, so a pickle that needs code
  (a `__reduce__` that imports or calls anything outside plain tensors/containers) is refused
  before any of its code runs;
- every checkpoint's sha256 is computed so it can go into the run manifest; a large file's hash is
  kept in the model cache under its path, size, modification time and inode, so a run does not
  read a multi-GB checkpoint twice to hash it (``sha256_file``).

Public: `sha256_file`, `sha256_files`, `sha256_state_dict`, `read_state_dict`,
`UnsafeCheckpointError`, `WEIGHT_SUFFIXES`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the CLI's preflight hashes files and needs no torch
    import torch

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
_CHUNK = 1 << 22
_REMEMBERED_FROM_BYTES = 64 << 20  # smaller files hash in well under a tenth of a second


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that cannot be read without running pickled code."""


def sha256_file(path: str | Path) -> str:
    """The file's sha256; for a large file, the one remembered for it while its size,
    modification time and inode are unchanged (as git's index trusts a file's stat)."""
    path = Path(path)
    stat = path.stat()
    if stat.st_size < _REMEMBERED_FROM_BYTES:
        return _hash(path)
    stamp = f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ino}"
    note = _hash_note(path)
    try:
        remembered_stamp, _, remembered = note.read_text().rpartition(" ")
        if remembered_stamp == stamp and len(remembered) == 64:
            return remembered
    except (OSError, ValueError):
        pass
    digest = _hash(path)
    try:  # a read-only home only costs the next run the hashing
        note.parent.mkdir(parents=True, exist_ok=True)
        partial = note.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(f"{stamp} {digest}")
        os.replace(partial, note)
    except OSError:
        pass
    return digest


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_note(path: Path) -> Path:
    from samflow.models.loading.cache import cache_root

    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return cache_root() / "sha256" / key


def sha256_files(paths: Iterable[str | Path]) -> str | None:
    """One hash for a (possibly sharded) checkpoint: the file's own hash when there is one
    file, else the hash of the sorted "name sha256" lines (order-independent, stable)."""
    paths = sorted(Path(p) for p in paths)
    if not paths:
        return None
    if len(paths) == 1:
        return sha256_file(paths[0])
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def sha256_pin(path: str | Path) -> str:
    """What a model pin (``model_sha256``, ``#sha256=``) names: a file's sha256; for a folder, the
    hash of the sorted "relative/path sha256" lines of every file in it (config, tokenizer and
    weights alike, so a changed config.json is a different model)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = "".join(f"{p.relative_to(path).as_posix()} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def sha256_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hash of tensor names, dtypes, shapes and bytes (used for in-code `tiny://` models)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a CPU state dict without ever unpickling code.

    Raises UnsafeCheckpointError when the file needs pickled code (e.g. a full pickled
    model object or a malicious `__reduce__`), FileNotFoundError when absent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    import torch

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it needs pickled code to unpickle, which samflow never runs "
            f"(torch.load weights_only=True said: {str(exc).splitlines()[0]}). "
            "Convert it to safetensors or a plain tensor state dict from a trusted environment."
        ) from None
    if not isinstance(loaded, Mapping):
        raise UnsafeCheckpointError(f"{path} does not hold a state dict (got {type(loaded).__name__})")
    return dict(loaded)


def weight_files(directory: str | Path) -> list[Path]:
    """Weight files of a model directory: the safetensors ones if any exist, else pickles."""
    directory = Path(directory)
    files = [p for p in directory.iterdir() if p.is_file()]
    safe = [p for p in files if p.suffix == SAFETENSORS_SUFFIX]
    if safe:
        return sorted(safe)
    return sorted(p for p in files if p.suffix in PICKLE_SUFFIXES)
