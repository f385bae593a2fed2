"""Generation with ``StableDiffusionControlNetPipeline``: a batch of condition maps and prompts
in, one image per (condition, prompt, seed) out, each from its own seeded generator (the same
seed gives the same image whatever else is in the batch)."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from samflow.models.controlnet import parts as loading
from samflow.models.loading.registry import ModelLoadError, ModelSource, build_runner, parse_uri

DEFAULT_CONTROLNET = "lllyasviel/control_v11p_sd15_seg"


class ControlNetRunner:
    family = "controlnet"

    def __init__(self, parts: loading.Parts, uri: str, controlnet_uri: str | None,
                 device: torch.device, dtype: torch.dtype) -> None:
        from diffusers import StableDiffusionControlNetPipeline

        components = {k: v for k, v in parts.components.items() if k not in ("safety_checker", "feature_extractor",
                                                                             "image_encoder")}
        self.pipeline = StableDiffusionControlNetPipeline(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.pipeline.set_progress_bar_config(disable=True)
        self.uri = uri
        self.controlnet_uri = controlnet_uri
        self.device = device
        self.dtype = dtype
        self.checkpoint_sha256 = parts.checkpoint_sha256
        self.model = self.pipeline.unet  # what `models check` and stage info look at
        self.num_parameters = sum(
            p.numel() for name in ("unet", "controlnet", "vae", "text_encoder")
            for p in getattr(self.pipeline, name).parameters()
        )
        downsamplings = len(self.pipeline.unet.config.block_out_channels) - 1
        # generated sides must divide by this: the VAE's factor times the U-Net's own halvings
        self.size_multiple = int(self.pipeline.vae_scale_factor) * 2 ** downsamplings

    @torch.inference_mode()
    def generate(
        self,
        conditions: Sequence[np.ndarray],
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        negative_prompt: str = "",
        steps: int = 20,
        guidance_scale: float = 7.5,
        conditioning_scale: float = 1.0,
    ) -> list[np.ndarray]:
        """HxWx3 uint8 RGB images, one per condition (HxWx3 uint8, sides multiples of
        ``size_multiple``); images of one size run as one batch."""
        if not len(conditions) == len(prompts) == len(seeds):
            raise ValueError("generate needs one prompt and one seed per condition")
        out: list[np.ndarray | None] = [None] * len(conditions)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, condition in enumerate(conditions):
            self._check(condition)
            groups[condition.shape].append(index)
        for (height, width, _), indices in groups.items():
            result = self.pipeline(
                prompt=[prompts[i] for i in indices],
                negative_prompt=[negative_prompt] * len(indices) if guidance_scale > 1 else None,
                image=[Image.fromarray(conditions[i]) for i in indices],
                height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
                controlnet_conditioning_scale=conditioning_scale,
                # CPU generators: the same noise for a seed on any device and in any batch
                generator=[torch.Generator("cpu").manual_seed(int(seeds[i])) for i in indices],
                output_type="np",
            )
            for i, image in zip(indices, result.images, strict=True):
                out[i] = np.clip(np.rint(np.nan_to_num(image) * 255.0), 0, 255).astype(np.uint8)
        return out  # type: ignore[return-value]

    def _check(self, condition: np.ndarray) -> None:
        if condition.ndim != 3 or condition.shape[2] != 3 or condition.dtype != np.uint8:
            raise ValueError(f"a condition is an HxWx3 uint8 image, not {condition.dtype} {condition.shape}")
        if condition.shape[0] % self.size_multiple or condition.shape[1] % self.size_multiple:
            raise ValueError(f"condition sides {condition.shape[:2]} are not multiples of {self.size_multiple}")


def _build_pair(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype,
                controlnet: str | None) -> ControlNetRunner:
    if source.in_code:
        if controlnet is not None and controlnet != source.uri:
            raise ModelLoadError(f"{source.uri} builds its own ControlNet; leave the ControlNet unset")
        return ControlNetRunner(loading.in_code(source.kind, device, dtype), source.uri, source.uri, device, dtype)
    pipeline_dir = loading.local_folder(source, "pipeline")
    if controlnet is None and not (pipeline_dir / "controlnet").is_dir():
        controlnet = DEFAULT_CONTROLNET
    controlnet_dir = None
    if controlnet is not None:
        control_source = parse_uri(controlnet)
        if control_source.in_code:
            raise ModelLoadError(f"{controlnet}: an in-code ControlNet only comes with its in-code pipeline "
                                 f"({control_source.kind}://controlnet as the model)")
        controlnet_dir = loading.local_folder(control_source, "controlnet")
    parts = loading.from_folders(pipeline_dir, controlnet_dir, device, dtype)
    return ControlNetRunner(parts, source.uri, controlnet, device, dtype)


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> ControlNetRunner:
    """The registry's entry: one URI, a pipeline with its own ``controlnet/`` (or in code), or
    a Stable Diffusion folder paired with the default segmentation ControlNet."""
    return _build_pair(family, source, device, dtype, controlnet=None)


def load_pair(model: str, controlnet: str | None = None, *, device: str | torch.device | None = None,
              dtype: torch.dtype | None = None) -> ControlNetRunner:
    """Stable Diffusion ``model`` with ``controlnet`` (local folders or Hub ids; ``None``: the
    model folder's own ``controlnet/``, else the default segmentation ControlNet)."""
    builder: Any = functools.partial(_build_pair, controlnet=controlnet)
    return build_runner(builder, "controlnet", model, device=device, dtype=dtype)
