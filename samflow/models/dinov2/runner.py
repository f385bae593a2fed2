"""DINOv2 (transformers `Dinov2Model`): image embeddings and patch features.

    runner = load_model("dinov2", "facebook/dinov2-base")      # or tiny://dinov2
    vectors = runner.embed_images(images)    # (B, dim) float32 CPU, L2-normalised CLS embedding
    grid = runner.patch_features(images)     # (B, h, w, dim) on the device, un-normalised

Pre-processing follows the DINOv2 processor: shortest side to 256/224 of the crop (bicubic),
centre crop (224 for the real models), ImageNet mean/std; done in torch on the device per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from samflow.models.loading.hf import (
    HfRunner,
    LoadedModel,
    build_in_code,
    load_pretrained,
    read_json,
)
from samflow.models.loading.registry import ModelSource
from samflow.models.common.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalisation,
    resize_shortest_center_crop,
)

RESIZE_OVER_CROP = 256 / 224


class DinoRunner(HfRunner):
    family = "dinov2"

    def __init__(self, loaded: LoadedModel, uri: str, device: torch.device, dtype: torch.dtype):
        super().__init__(loaded, uri, device, dtype)
        self.dim = int(self.model.config.hidden_size)
        self.patch_size = int(self.model.config.patch_size)
        config = read_json(loaded.directory / "preprocessor_config.json") if loaded.directory else {}
        self.norm = Normalisation(tuple(config.get("image_mean", IMAGENET_MEAN)),
                                  tuple(config.get("image_std", IMAGENET_STD)))
        default_crop = 224 if loaded.directory else int(self.model.config.image_size)
        self.crop_size = _size(config.get("crop_size"), "height", default_crop)
        self.resize_to = _size(config.get("size"), "shortest_edge", round(self.crop_size * RESIZE_OVER_CROP))

    def _hidden(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        pixels = resize_shortest_center_crop(images, self.crop_size, self.norm, self.device, self.dtype,
                                             resize_to=self.resize_to)
        return self.model(pixel_values=pixels).last_hidden_state

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        if len(images) == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        cls = self._hidden(images)[:, 0]
        return F.normalize(cls.float(), dim=-1).cpu()

    @torch.inference_mode()
    def patch_features(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        hidden = self._hidden(images)
        side = self.crop_size // self.patch_size
        return hidden[:, 1 : 1 + side * side].reshape(len(images), side, side, self.dim)


def _size(value: int | dict | None, key: str, default: int) -> int:
    """Processor sizes are an int in older configs and a dict in newer ones."""
    if isinstance(value, dict):
        return int(value.get(key, default))
    return int(value) if value is not None else default


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> DinoRunner:
    from transformers import Dinov2Model

    if source.in_code:
        from samflow.models.dinov2.tiny import in_code_config

        loaded = build_in_code(Dinov2Model, in_code_config("dinov2", source.kind), device, dtype)
    else:
        loaded = load_pretrained(Dinov2Model, source, device, dtype)
    return DinoRunner(loaded, source.uri, device, dtype)
