"""CLIP and SigLIP (transformers `CLIPModel` / `SiglipModel`): L2-normalised embeddings, zero-shot.

    runner = load_model("clip", "openai/clip-vit-large-patch14")    # or "siglip", or tiny://clip
    img = runner.embed_images(images)            # (B, dim) float32 CPU, unit length
    txt = runner.embed_texts(["a cat", "a dog"])  # (T, dim) float32 CPU, unit length
    idx, prob = runner.zero_shot(img, ["cat", "dog"], ["a photo of a {}.", "a drawing of a {}."])

Zero-shot ensembles prompt templates: each class vector is the mean of its normalised template
embeddings, normalised again; scores are a softmax over the vocabulary of the model's scaled
cosine similarities. Class vectors are cached per (vocabulary, templates) on the runner.
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
from samflow.models.loading.registry import ModelLoadError, ModelSource
from samflow.models.common.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    HALF,
    Normalisation,
    resize_shortest_center_crop,
    resize_square,
)


class ClipRunner(HfRunner):
    family = "clip"

    def __init__(
        self,
        family: str,
        loaded: LoadedModel,
        tokenizer,
        uri: str,
        device: torch.device,
        dtype: torch.dtype,
        norm: Normalisation,
        center_crop: bool,
    ):
        self.family = family
        super().__init__(loaded, uri, device, dtype)
        self.tokenizer = tokenizer
        self.model_id = uri
        self.norm = norm
        self.center_crop = center_crop
        config = self.model.config
        self.image_size = int(config.vision_config.image_size)
        self.max_text_length = int(config.text_config.max_position_embeddings)
        self.dim = int(getattr(config, "projection_dim", None) or config.text_config.hidden_size)
        if family == "siglip":
            self.dim = int(config.vision_config.hidden_size)
        self._class_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}

    def _pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        if self.center_crop:
            return resize_shortest_center_crop(images, self.image_size, self.norm, self.device, self.dtype)
        size = (self.image_size, self.image_size)
        return resize_square(images, size, self.norm, self.device, self.dtype, mode="bicubic")

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        if len(images) == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        features = self.model.get_image_features(pixel_values=self._pixels(images)).pooler_output
        return F.normalize(features.float(), dim=-1).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if len(texts) == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        # SigLIP was trained on max-length padded text and pools the last position
        padding = "max_length" if self.family == "siglip" else True
        tokens = self.tokenizer(list(texts), padding=padding, truncation=True,
                                max_length=self.max_text_length, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        if self.family == "siglip":
            tokens.pop("attention_mask", None)
        features = self.model.get_text_features(**tokens).pooler_output
        return F.normalize(features.float(), dim=-1).cpu()

    def class_embeddings(self, vocabulary: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """(V, dim) template-ensembled class vectors, unit length, cached per vocabulary."""
        key = (tuple(vocabulary), tuple(templates) or ("{}",))
        if key not in self._class_cache:
            prompts = [template.format(label) for label in key[0] for template in key[1]]
            per_prompt = self.embed_texts(prompts).view(len(key[0]), len(key[1]), -1)
            self._class_cache[key] = F.normalize(per_prompt.mean(dim=1), dim=-1)
        return self._class_cache[key]

    @torch.inference_mode()
    def label_probabilities(
        self, image_embeddings: torch.Tensor, vocabulary: Sequence[str], templates: Sequence[str]
    ) -> torch.Tensor:
        """(B, V) softmax over the vocabulary of the scaled cosine similarities."""
        if len(vocabulary) == 0:
            raise ValueError("zero_shot needs a non-empty vocabulary")
        classes = self.class_embeddings(vocabulary, templates)
        scale = float(self.model.logit_scale.float().exp().item())
        logits = scale * image_embeddings.float().cpu() @ classes.T
        return logits.softmax(dim=-1)

    def zero_shot(
        self, image_embeddings: torch.Tensor, vocabulary: Sequence[str], templates: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (B,) long, scores (B,) softmax probability of the chosen label)."""
        scores, indices = self.label_probabilities(image_embeddings, vocabulary, templates).max(dim=-1)
        return indices, scores


def _preprocessing(family: str, loaded: LoadedModel) -> tuple[Normalisation, bool]:
    config = read_json(loaded.directory / "preprocessor_config.json") if loaded.directory else {}
    mean, std, crop = (HALF, HALF, False) if family == "siglip" else (CLIP_MEAN, CLIP_STD, True)
    mean = tuple(config.get("image_mean", mean))
    std = tuple(config.get("image_std", std))
    return Normalisation(mean, std), bool(config.get("do_center_crop", crop))


def _tokenizer(loaded: LoadedModel):
    if loaded.directory is None:
        from samflow.models.common.tiny_text import tiny_tokenizer

        return tiny_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(loaded.directory))
    except ImportError as exc:  # e.g. SigLIP's SentencePiece tokenizer without the package
        first_sentence = " ".join(str(exc).split()).split(". ")[0]
        raise ModelLoadError(
            f"the tokenizer of {loaded.directory} needs an optional package ({first_sentence}); "
            "install it (SigLIP: pip install sentencepiece) or use a repository with tokenizer.json"
        ) from None


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> ClipRunner:
    import transformers

    # One family's modules only: naming both classes would import SigLIP's for a CLIP run.
    model_cls = transformers.SiglipModel if family == "siglip" else transformers.CLIPModel
    if source.in_code:
        from samflow.models.clip.tiny import in_code_config, settle_in_code_clip

        settle = settle_in_code_clip if (family, source.kind) == ("clip", "tiny") else None
        loaded = build_in_code(model_cls, in_code_config(family, source.kind), device, dtype, settle)
    else:
        loaded = load_pretrained(model_cls, source, device, dtype)
    norm, center_crop = _preprocessing(family, loaded)
    return ClipRunner(family, loaded, _tokenizer(loaded), source.uri, device, dtype, norm, center_crop)
