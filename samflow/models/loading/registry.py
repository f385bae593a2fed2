"""The family registry: which families exist, what each does (its tasks), how a URI's family is
told, and `load_model`, the one way to get a runner.

URIs:
  tiny://<family>        small randomly initialised model built in code (seeded; tests, dry runs)
  random://<family>      the family's default published architecture, full size, random weights
  hf://org/name, org/name  Hugging Face Hub id (local HF cache first, then the network);
                         hf://org/name/file.pth names one file of a repository (Real-ESRGAN)
  /path, ./path, file:///path  local model directory (HF layout) or checkpoint file
  s3://, gs://, http(s)://  fetched once per node into the model cache (`cache.py`), then local
  torchvision://<builder>  torchvision's published detection weights (Mask R-CNN)

Device and dtype are chosen once here: CUDA when available, else CPU; bf16 on GPUs that support
it (fp16 otherwise; Real-ESRGAN always fp16 on GPU), fp32 on CPU. Every runner exposes
`family, uri, device, dtype, checkpoint_sha256, num_parameters`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from samflow.config import StorageConfig


@dataclass(frozen=True)
class Builder:
    """Where a (family, task)'s runner is built: `module.function(family, source, device, dtype)`."""

    module: str
    function: str = "build"


# (family, task) -> its builder: the one place that says which family does what. A task is what a
# stage asks of a model; a family's first task is what `load_model(family, uri)` builds.
REGISTRY: dict[tuple[str, str], Builder] = {
    ("sam", "segment"): Builder("samflow.models.sam.runner"),
    ("sam2", "segment"): Builder("samflow.models.sam2.runner"),
    ("sam2", "track"): Builder("samflow.models.sam2.runner", "build_video"),
    ("sam3", "concepts"): Builder("samflow.models.sam3.runner"),
    ("sam3", "track"): Builder("samflow.models.sam3.tracker", "build_video"),
    ("clip", "embed"): Builder("samflow.models.clip.runner"),
    ("siglip", "embed"): Builder("samflow.models.clip.runner"),
    ("dinov2", "features"): Builder("samflow.models.dinov2.runner"),
    ("owlv2", "propose"): Builder("samflow.models.detectors.owlv2"),
    ("grounding_dino", "propose"): Builder("samflow.models.detectors.grounding_dino"),
    ("detr", "propose"): Builder("samflow.models.detectors.detr"),
    ("maskrcnn", "propose"): Builder("samflow.models.detectors.maskrcnn"),
    ("unet", "semantic"): Builder("samflow.models.unet.runner"),
    ("realesrgan", "upscale"): Builder("samflow.models.realesrgan.runner"),
    ("controlnet", "synthesize"): Builder("samflow.models.controlnet.runner"),
}

FAMILIES = tuple(dict.fromkeys(family for family, _ in REGISTRY))
TASKS = tuple(dict.fromkeys(task for _, task in REGISTRY))

# transformers `model_type` (a folder's config.json) -> family
MODEL_TYPES = {
    "sam": "sam", "sam2": "sam2", "sam2_video": "sam2",
    "sam3": "sam3", "sam3_video": "sam3", "sam3_tracker": "sam3", "sam3_tracker_video": "sam3",
    "clip": "clip", "siglip": "siglip", "dinov2": "dinov2", "owlv2": "owlv2", "maskrcnn": "maskrcnn",
    "rt_detr": "detr", "rt_detr_v2": "detr", "d_fine": "detr", "unet": "unet",
    "grounding-dino": "grounding_dino", "mm-grounding-dino": "grounding_dino",
}

OFFLINE_HINT = "offline? use a local model directory or a checkpoint file path, or tiny://<family> for a dry run"
REMOTE_SCHEMES = ("s3://", "s3a://", "gs://", "http://", "https://")
TORCHVISION_SCHEME = "torchvision://"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do (user-facing)."""


@dataclass(frozen=True)
class ModelSource:
    uri: str
    kind: Literal["tiny", "random", "local", "hub", "remote", "torchvision"]
    # tiny / random: family name; local: filesystem path; hub: repo id; remote: the URI;
    # torchvision: the builder's name
    location: str

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
    if uri.lower().startswith(REMOTE_SCHEMES):
        return ModelSource(uri, "remote", uri)
    if uri.startswith(TORCHVISION_SCHEME):
        return ModelSource(uri, "torchvision", uri[len(TORCHVISION_SCHEME):].strip("/"))
    if uri.startswith("hf://"):
        return ModelSource(uri, "hub", uri[len("hf://"):].strip("/"))
    if uri.startswith("file://"):
        return ModelSource(uri, "local", uri[len("file://"):])
    path = Path(uri).expanduser()
    looks_local = uri.startswith(("/", ".", "~")) or path.exists() or uri.count("/") != 1
    return ModelSource(uri, "local" if looks_local else "hub", str(path) if looks_local else uri)


def families_for(task: str) -> tuple[str, ...]:
    return tuple(family for family, t in REGISTRY if t == task)


def default_task(family: str) -> str:
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return next(t for f, t in REGISTRY if f == family)


def check_task(family: str, task: str, uri: str) -> str:
    """`family` when it does `task`, else a ModelLoadError naming the families that do."""
    default_task(family)  # an unknown family is refused as such
    if (family, task) not in REGISTRY:
        raise ModelLoadError(
            f"{uri} is a {family!r} model; the {task} stage takes {' / '.join(families_for(task))} models"
        )
    return family


def resolve_device(device: str | torch.device | None) -> torch.device:
    import torch  # here: the CLI's preflight parses URIs with this module and needs no torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device} requested but CUDA is not available; use device='cpu'")
    return device


def resolve_dtype(family: str, device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    import torch

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
    task: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    storage: StorageConfig | None = None,
    sha256: str | None = None,
) -> Any:
    """Load `uri` as a runner of `family` ("auto": told by the URI) for `task` (default: the
    family's main one; "track" for video propagation). Remote URIs go through the model cache
    (`storage` for object-store settings, `sha256` a pin). Raises ModelLoadError."""
    from samflow.models.loading.cache import fetch_model

    local = fetch_model(uri, storage, sha256)
    if family == "auto":
        family = infer_family(local)
    task = task or default_task(family)
    builder = REGISTRY[(check_task(family, task, uri), task)]
    function = getattr(importlib.import_module(builder.module), builder.function)
    runner = build_runner(function, family, local, device=device, dtype=dtype)
    if local != uri.strip():
        runner.uri = uri
    return runner


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
    if source.kind == "remote":
        raise ModelLoadError(f"{uri}: a remote model is fetched by load_model (the model cache) first")
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


def infer_family(uri: str, *, read_config: Callable[[ModelSource], dict | None] | None = None) -> str:
    """The family of a local, in-code, torchvision or Hub URI: from the URI (tiny://<family>,
    torchvision://maskrcnn_*), else the model's config.json `model_type`, else a checkpoint
    file's keys. `read_config` replaces how a Hub model's config.json is read (preflight reads
    that one file, never the weights)."""
    source = parse_uri(uri)
    if source.in_code:
        if source.location not in FAMILIES:
            raise ModelLoadError(
                f"unknown {source.kind} model {uri}; expected {source.kind}://<family> with family in {', '.join(FAMILIES)}"
            )
        return source.location
    if source.kind == "torchvision":
        return _torchvision_family(source)
    if source.kind == "remote":
        raise ModelLoadError(f"{uri}: a remote model's family is told from its cached copy")
    path: Path | None = None
    if read_config is not None:
        config = read_config(source)
    else:
        from samflow.models.loading.hf import local_model_dir, read_json

        path = local_model_dir(source)
        config = read_json(path / "config.json") if path.is_dir() and (path / "config.json").is_file() else None
    if config is not None:
        model_type = config.get("model_type", "")
        if model_type in MODEL_TYPES:
            return MODEL_TYPES[model_type]
        raise ModelLoadError(f"{uri}: model_type {model_type!r} is not a samflow family; pass --family")
    from samflow.models.loading.sniff import family_of_checkpoint

    return family_of_checkpoint(uri, path)


def _torchvision_family(source: ModelSource) -> str:
    from torchvision.models import detection

    if source.location.startswith("maskrcnn") and callable(getattr(detection, source.location, None)):
        return "maskrcnn"
    raise ModelLoadError(
        f"{source.uri}: not a torchvision Mask R-CNN builder; use torchvision://maskrcnn_resnet50_fpn_v2 "
        "or torchvision://maskrcnn_resnet50_fpn"
    )


def resolve_family(uri: str, task: str, family: str = "auto") -> str:
    """The family that does `task` for a local / in-code / torchvision / Hub `uri`."""
    return check_task(infer_family(uri) if family == "auto" else family, task, uri)
