"""Loading transformers models the samflow way: one path for real and tiny models.

- `local_model_dir(source)`: a local directory for a local or Hub URI (HF cache first, then the
  network), or ModelLoadError saying what to do when it cannot be reached.
- `load_pretrained(cls, source, device, dtype)`: safe weights check (safetensors, or pickles that
  `torch.load(weights_only=True)` accepts), sha256 of the weight files, `from_pretrained` with SDPA
  attention where the architecture has it.
- `build_in_code(cls, config, device, dtype)`: the same class from a config written in code
  (tiny:// and random:// models), seeded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samflow.models.loading.checkpoint import (
    SAFETENSORS_SUFFIX,
    UnsafeCheckpointError,
    read_state_dict,
    sha256_files,
    sha256_state_dict,
    weight_files,
)
from samflow.models.loading.registry import OFFLINE_HINT, ModelLoadError, ModelSource

if TYPE_CHECKING:  # imported where used: the CLI's preflight reads config.json and needs no torch
    import torch

TINY_SEED = 0
# Config, tokenizer and processor files a runner needs, plus safetensors weights; pickled .bin
# weights are fetched only for repositories that have no safetensors (never both).
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
_HUB_PICKLE_PATTERNS = ["*.bin", "*.pth", "*.pt"]


@dataclass
class LoadedModel:
    model: Any
    checkpoint_sha256: str | None
    directory: Path | None  # None for in-code (tiny / random) models

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class HfRunner:
    """What every runner of a transformers model holds: the model, where it came from, and
    where and how it runs. Family runners add their pre-processing and batch API."""

    def __init__(self, loaded: LoadedModel, uri: str, device: torch.device, dtype: torch.dtype) -> None:
        self.model = loaded.model
        self.uri = uri
        self.device = device
        self.dtype = dtype
        self.checkpoint_sha256 = loaded.checkpoint_sha256
        self.num_parameters = loaded.num_parameters


def local_model_dir(source: ModelSource) -> Path:
    if source.kind == "local":
        path = Path(source.location)
        if not path.exists():
            raise ModelLoadError(f"model path {path} does not exist ({OFFLINE_HINT})")
        return path
    if source.kind != "hub":
        raise ModelLoadError(f"{source.uri} has no directory")
    return _download_from_hub(source)


def _download_from_hub(source: ModelSource) -> Path:
    """`org/name` -> a snapshot directory; `org/name/path/in/repo` -> that one file."""
    parts = source.location.split("/")
    fetch = _snapshot if len(parts) <= 2 else _single_file
    try:  # a cached copy never touches the network
        return fetch(source.location, local_only=True)
    except Exception:
        pass
    try:
        return fetch(source.location, local_only=False)
    except Exception as exc:
        raise ModelLoadError(
            f"could not fetch {source.location!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {OFFLINE_HINT}"
        ) from None


def _snapshot(repo_id: str, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=local_only))
    if not weight_files(path):
        path = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS + _HUB_PICKLE_PATTERNS,
                                      local_files_only=local_only))
    return path


def _single_file(location: str, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download

    org, name, filename = location.split("/", 2)
    return Path(hf_hub_download(f"{org}/{name}", filename, local_files_only=local_only))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def checked_weights(directory: Path) -> tuple[list[Path], str | None]:
    """Weight files of an HF directory, refused if unsafe; and their combined sha256."""
    files = weight_files(directory)
    if not files:
        raise ModelLoadError(f"no weight files (*.safetensors, *.bin) in {directory}")
    if files[0].suffix != SAFETENSORS_SUFFIX:
        for file in files:  # refuse pickled code before transformers opens the file
            try:
                read_state_dict(file)
            except UnsafeCheckpointError as exc:
                raise ModelLoadError(str(exc)) from None
    return files, sha256_files(files)


def _with_sdpa(factory, **kwargs):
    """Build with SDPA attention; fall back to the default when the architecture lacks it."""
    try:
        return factory(attn_implementation="sdpa", **kwargs)
    except (ValueError, NotImplementedError):
        # explicit: the failed attempt may have left "sdpa" on a shared sub-config (RT-DETR)
        return factory(attn_implementation="eager", **kwargs)


def load_pretrained(model_cls: Any, source: ModelSource, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    directory = local_model_dir(source)
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} has no config.json; is it a Hugging Face model directory?")
    files, sha = checked_weights(directory)
    use_safetensors = files[0].suffix == SAFETENSORS_SUFFIX
    model = _with_sdpa(model_cls.from_pretrained, pretrained_model_name_or_path=str(directory),
                       dtype=dtype, use_safetensors=use_safetensors)
    model.to(device).eval()
    return LoadedModel(model, sha, directory)


def build_in_code(
    model_cls: Any,
    config: Any,
    device: torch.device,
    dtype: torch.dtype,
    settle: Callable[[torch.nn.Module], None] | None = None,
) -> LoadedModel:
    """Instantiate `model_cls` from an in-code config with a fixed seed (same class as real);
    `settle` adjusts a family's random weights before the checkpoint hash is taken."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = _with_sdpa(model_cls._from_config, config=config)
        _reset_to_torch_defaults(model)
        if settle is not None:
            settle(model)
    sha = sha256_state_dict(model.state_dict())
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, sha, None)


def _reset_to_torch_defaults(model: torch.nn.Module) -> None:
    """Re-initialise layers with torch's fan-in scaled defaults.

    Some HF inits are tuned for training from scratch at full size (SAM's vision init is 1e-10,
    which makes every tiny embedding ~0); fan-in init keeps tiny activations O(1) so batching and
    frame tests compare non-degenerate numbers.
    """
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
