"""Model registry: (family, URI) -> a loaded runner with a batch API.

URIs:
  tiny://<family>        small randomly initialised model built in code (seeded; tests, dry runs)
  random://<family>      the family's default published architecture, full size, random weights
                         (seeded; benchmarks and memory sizing without downloads)
  hf://org/name, org/name  Hugging Face Hub id (local HF cache first, then the network);
                         hf://org/name/file.pth names one file of a repository (Real-ESRGAN)
  /path, ./path, file:///path  local model directory (HF layout) or checkpoint file
  s3://...               not handled here: `flows/` copies it to a local directory first

Device and dtype are chosen once here: CUDA when available, else CPU; bf16 on GPUs that support
it (fp16 otherwise; Real-ESRGAN always fp16 on GPU), fp32 on CPU. Every runner exposes
`family, uri, device, dtype, checkpoint_sha256, num_parameters`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

FAMILIES = ("sam", "sam2", "sam3", "clip", "siglip", "dinov2", "owlv2", "realesrgan",
            "maskrcnn", "detr", "grounding_dino", "unet", "controlnet")

# Family -> module exposing `build(family, source, device, dtype) -> runner`. Imported lazily so
# that loading CLIP never pays for importing SAM 2 and friends.
_RUNNER_MODULES = {
    "sam": "samflow.models.sam.runner",
    "sam2": "samflow.models.sam2.runner",
    "sam3": "samflow.models.sam3.runner",
    "clip": "samflow.models.clip.runner",
    "siglip": "samflow.models.clip.runner",
    "dinov2": "samflow.models.dinov2.runner",
    "owlv2": "samflow.models.detectors.owlv2",
    "realesrgan": "samflow.models.realesrgan.runner",
    "maskrcnn": "samflow.models.detectors.maskrcnn",
    "detr": "samflow.models.detectors.detr",
    "unet": "samflow.models.unet.runner",
    "grounding_dino": "samflow.models.detectors.grounding_dino",
    "controlnet": "samflow.models.controlnet.runner",
}

OFFLINE_HINT = "offline? use a local model directory or a checkpoint file path, or tiny://<family> for a dry run"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do (user-facing)."""


@dataclass(frozen=True)
class ModelSource:
    uri: str
    kind: Literal["tiny", "random", "local", "hub"]
    location: str  # tiny / random: family name; local: filesystem path; hub: repo id

    @property
    def in_code(self) -> bool:
        """Built from a config written in code (tiny:// or random://), no checkpoint."""
        return self.kind in ("tiny", "random")


def parse_uri(uri: str) -> ModelSource:
    uri = uri.strip()
    if not uri:
        raise ModelLoadError("empty model URI")
    for scheme in ("tiny", "random"):
        if uri.startswith(f"{scheme}://"):
            return ModelSource(uri, scheme, uri[len(scheme) + 3 :].strip("/"))
    if uri.startswith("s3://") or uri.startswith("gs://"):
        raise ModelLoadError(
            f"{uri}: object-store model URIs are copied to a local cache by the pipeline; "
            "pass the local copy's directory here"
        )
    if uri.startswith("hf://"):
        return ModelSource(uri, "hub", uri[len("hf://"):].strip("/"))
    if uri.startswith("file://"):
        return ModelSource(uri, "local", uri[len("file://"):])
    path = Path(uri).expanduser()
    looks_local = uri.startswith(("/", ".", "~")) or path.exists() or uri.count("/") != 1
    return ModelSource(uri, "local" if looks_local else "hub", str(path) if looks_local else uri)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device} requested but CUDA is not available; use device='cpu'")
    return device


def resolve_dtype(family: str, device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    if device.type != "cuda":
        return torch.float32
    if family == "realesrgan":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_model(
    family: str,
    uri: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Load `uri` as a runner of `family`. Raises ModelLoadError with an actionable message."""
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    module = importlib.import_module(_RUNNER_MODULES[family])
    return build_runner(module.build, family, uri, device=device, dtype=dtype)


def build_runner(
    builder: Callable[[str, ModelSource, torch.device, torch.dtype], Any],
    family: str,
    uri: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Resolve URI, device and dtype once, call `builder`, turn any failure into ModelLoadError."""
    source = parse_uri(uri)
    if source.in_code and source.location != family:
        raise ModelLoadError(
            f"{uri} is a {source.kind} {source.location!r} model, not {family!r}; use {source.kind}://{family}"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(family, torch_device, dtype)
    try:
        return builder(family, source, torch_device, torch_dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # any loader failure becomes one user-facing error type
        raise ModelLoadError(f"could not load {family} model from {uri}: {type(exc).__name__}: {exc}") from exc
