"""The parts of an SD + ControlNet pipeline, from wherever their URIs point.

- in code (``tiny://controlnet``, ``random://controlnet``): every part from a config in
  ``configs.py``, seeded, with samflow's offline CLIP tokenizer;
- a local folder or Hub id of a Stable Diffusion pipeline (diffusers layout: ``model_index.json``,
  ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), plus a ControlNet folder
  or Hub id (``config.json`` + weights), or the pipeline folder's own ``controlnet/``.

Weights load with safetensors where a folder has them; pickled weights must pass
``torch.load(weights_only=True)`` before diffusers opens them. The checkpoint hash covers the
weight files of the parts that are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samflow.models.loading.checkpoint import (
    SAFETENSORS_SUFFIX,
    UnsafeCheckpointError,
    read_state_dict,
    sha256_files,
    sha256_state_dict,
)
from samflow.models.loading.registry import OFFLINE_HINT, ModelLoadError, ModelSource

IN_CODE_SEED = 0
PIPELINE_PARTS = ("unet", "vae", "text_encoder")
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
_CONTROLNET_PATTERNS = ["*.json", "diffusion_pytorch_model.safetensors"]


@dataclass
class Parts:
    """What ``StableDiffusionControlNetPipeline`` is built from, and their checkpoint hash."""

    components: dict[str, Any]
    checkpoint_sha256: str | None


def in_code(kind: str, device: torch.device, dtype: torch.dtype) -> Parts:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UniPCMultistepScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from samflow.models.common.tiny_text import tiny_tokenizer
    from samflow.models.controlnet.configs import in_code_parts, text_positions

    configs = in_code_parts(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(IN_CODE_SEED)
        models = {
            "unet": UNet2DConditionModel(**configs["unet"]),
            "controlnet": ControlNetModel(**configs["controlnet"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        }
    digest = sha256_state_dict({f"{name}.{key}": value for name, model in models.items()
                                for key, value in model.state_dict().items()})
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = text_positions(kind)
    # SD 1.5's noise schedule (scaled-linear betas), the sampler ControlNet's authors recommend
    scheduler = UniPCMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    for model in models.values():
        model.to(device=device).eval()
        if dtype != torch.float32:  # built in fp32; casting a float32 model only warns
            model.to(dtype=dtype)
    return Parts({**models, "tokenizer": tokenizer, "scheduler": scheduler}, digest)


def from_folders(pipeline_dir: Path, controlnet_dir: Path | None, device: torch.device, dtype: torch.dtype) -> Parts:
    """A diffusers SD pipeline folder and a ControlNet folder (None: the pipeline's ``controlnet/``)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    if not (pipeline_dir / "model_index.json").is_file():
        raise ModelLoadError(f"{pipeline_dir} has no model_index.json; is it a diffusers Stable Diffusion folder?")
    if controlnet_dir is None:
        controlnet_dir = pipeline_dir / "controlnet"
        if not controlnet_dir.is_dir():
            raise ModelLoadError(f"{pipeline_dir} has no controlnet/ folder; name a ControlNet (synth.controlnet)")
    if not (controlnet_dir / "config.json").is_file():
        raise ModelLoadError(f"{controlnet_dir} has no config.json; is it a diffusers ControlNet folder?")
    weights = [file for part in PIPELINE_PARTS for file in _checked_weights(pipeline_dir / part)]
    control_weights = _checked_weights(controlnet_dir)
    controlnet = ControlNetModel.from_pretrained(str(controlnet_dir), dtype=dtype,
                                                 use_safetensors=_all_safetensors(control_weights))
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        str(pipeline_dir), controlnet=controlnet, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, dtype=dtype, use_safetensors=_all_safetensors(weights),
    )
    components = dict(pipeline.components)
    components["scheduler"] = UniPCMultistepScheduler.from_config(pipeline.scheduler.config)
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        components[name].to(device=device).eval()
    return Parts(components, sha256_files(weights + control_weights))


def _all_safetensors(files: list[Path]) -> bool:
    return all(f.suffix == SAFETENSORS_SUFFIX for f in files)


def _checked_weights(folder: Path) -> list[Path]:
    """The weight files of one part (safetensors when there are any, never both), refused if a
    pickle needs code to load."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} does not exist ({OFFLINE_HINT})")
    files = sorted(p for p in folder.iterdir() if p.stem.split(".")[0] in _WEIGHT_NAMES and p.is_file())
    safe = [p for p in files if p.suffix == SAFETENSORS_SUFFIX]
    if safe:
        return safe
    pickles = [p for p in files if p.suffix in (".bin", ".pt", ".pth")]
    if not pickles:
        raise ModelLoadError(f"no weight files (*.safetensors, *.bin) in {folder}")
    for file in pickles:
        try:
            read_state_dict(file)
        except UnsafeCheckpointError as exc:
            raise ModelLoadError(str(exc)) from None
    return pickles


def local_folder(source: ModelSource, kind: str) -> Path:
    """A local folder for ``source``: the path itself, or the Hub repository's cached snapshot
    (the cache first, then the network). ``kind``: "pipeline" or "controlnet"."""
    if source.kind == "local":
        path = Path(source.location)
        if not path.is_dir():
            raise ModelLoadError(f"model folder {path} does not exist ({OFFLINE_HINT})")
        return path
    for local_only in (True, False):
        try:
            return _download(source.location, kind, local_only)
        except Exception as exc:  # noqa: BLE001 - the cache miss is expected; the network's failure is reported
            if not local_only:
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise ModelLoadError(f"could not fetch {source.location!r} from the Hugging Face Hub "
                                     f"({type(exc).__name__}: {first}); {OFFLINE_HINT}") from None
    raise AssertionError("unreachable")


def _download(repo_id: str, kind: str, local_only: bool) -> Path:
    if kind == "pipeline":
        from diffusers import DiffusionPipeline

        return Path(DiffusionPipeline.download(repo_id, use_safetensors=True, local_files_only=local_only))
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=_CONTROLNET_PATTERNS, local_files_only=local_only))
