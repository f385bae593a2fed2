"""OWLv2 (transformers `Owlv2ForObjectDetection`): class-agnostic proposals and text-query detection.

    runner = load_model("owlv2", "google/owlv2-base-patch16-ensemble")   # or tiny://owlv2
    for boxes, scores in runner.propose(images, max_boxes=50):           # objectness head
        ...                                                               # boxes (N,4) xyxy px
    for boxes, scores, labels in runner.detect(images, ["a cat", "a dog"], threshold=0.1):
        ...                                                               # labels index queries

Every box is xyxy float32 on the CPU in the ORIGINAL image's pixel frame, clipped to the image:
OWLv2 sees each image zero-padded bottom/right to a square and resized to `image_size`, and
predicts boxes normalised to that padded square, so pixels = normalised * max(H, W). Boxes that
fall entirely into the padding are dropped. Results per image are sorted by score, NMS'd and
capped at `max_boxes`. The image tower runs once for a whole batch; text queries are embedded once
per distinct query list and cached on the runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from samflow.models.common.boxes import batched_nms, box_area, clip_xyxy, cxcywh_to_xyxy
from samflow.models.loading.hf import (
    HfRunner,
    LoadedModel,
    build_in_code,
    load_pretrained,
    read_json,
)
from samflow.models.loading.registry import ModelSource
from samflow.models.common.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    Normalisation,
    pad_square_resize,
)

QUERY_MAX_LENGTH = 16  # OWL-ViT / OWLv2 processors pad text queries to 16 tokens


@dataclass
class ImageFeatures:
    """Per-patch outputs for a batch: features (B,P,D), boxes (B,P,4) xyxy px, objectness (B,P)."""

    features: torch.Tensor
    boxes: torch.Tensor
    objectness: torch.Tensor
    original_sizes: list[tuple[int, int]]


class Owlv2Runner(HfRunner):
    family = "owlv2"

    def __init__(self, loaded: LoadedModel, tokenizer, uri: str, device: torch.device, dtype: torch.dtype,
                 norm: Normalisation):
        super().__init__(loaded, uri, device, dtype)
        self.tokenizer = tokenizer
        self.norm = norm
        self.image_size = int(self.model.config.vision_config.image_size)
        self._query_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.inference_mode()
    def image_features(self, images: Sequence[np.ndarray]) -> ImageFeatures:
        pixels, originals = pad_square_resize(images, self.image_size, self.norm, self.device, self.dtype)
        feature_map, _ = self.model.image_embedder(pixel_values=pixels)
        batch, height, width, dim = feature_map.shape
        features = feature_map.reshape(batch, height * width, dim)
        boxes = self.model.box_predictor(features, feature_map).float()  # cxcywh in [0,1] of the square
        objectness = self.model.objectness_predictor(features).float().sigmoid()
        longest = torch.tensor([max(s) for s in originals], dtype=torch.float32, device=boxes.device)
        boxes = cxcywh_to_xyxy(boxes) * longest[:, None, None]
        boxes = torch.stack([clip_xyxy(b, h, w) for b, (h, w) in zip(boxes, originals)])
        return ImageFeatures(features, boxes, objectness, originals)

    @torch.inference_mode()
    def query_embeddings(self, queries: Sequence[str]) -> torch.Tensor:
        """(Q, D) text query embeddings on the device (cached per query list)."""
        key = tuple(queries)
        if key not in self._query_cache:
            tokens = self.tokenizer(list(key), padding="max_length", truncation=True,
                                    max_length=QUERY_MAX_LENGTH, return_tensors="pt")
            out = self.model.owlv2.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                     attention_mask=tokens["attention_mask"].to(self.device))
            self._query_cache[key] = out.pooler_output
        return self._query_cache[key]

    def propose(self, images: Sequence[np.ndarray], max_boxes: int = 100, min_score: float = 0.0,
                nms_iou: float = 0.5) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Class-agnostic boxes from the objectness head: per image (boxes (N,4), scores (N,))."""
        feats = self.image_features(images)
        kept = _select(feats.boxes, feats.objectness, None, min_score, nms_iou, max_boxes)
        return [(boxes, scores) for boxes, scores, _ in kept]

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], queries: Sequence[str], threshold: float = 0.1,
               max_boxes: int = 100, nms_iou: float = 0.5) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Open-vocabulary detection: per image (boxes (N,4), scores (N,), labels (N,) into queries)."""
        if len(queries) == 0:
            raise ValueError("detect needs at least one text query")
        feats = self.image_features(images)
        query = self.query_embeddings(queries)
        query = query.to(feats.features.dtype).unsqueeze(0).expand(feats.features.shape[0], -1, -1)
        logits, _ = self.model.class_predictor(feats.features, query, None)
        scores, labels = logits.float().sigmoid().max(dim=-1)
        return _select(feats.boxes, scores, labels, threshold, nms_iou, max_boxes)


def _select(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None, min_score: float,
            nms_iou: float, max_boxes: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Threshold, drop boxes lying in the padding, NMS per image (and label), cap, move to CPU."""
    batch, patches = scores.shape
    image_index = torch.arange(batch, device=scores.device)[:, None].expand(batch, patches).reshape(-1)
    flat_boxes, flat_scores = boxes.reshape(-1, 4), scores.reshape(-1)
    flat_labels = labels.reshape(-1) if labels is not None else torch.zeros_like(image_index)
    valid = (flat_scores >= min_score) & (box_area(flat_boxes) >= 1.0)
    idx = valid.nonzero().squeeze(1)
    groups = image_index[idx] * (int(flat_labels.max().item()) + 1 if idx.numel() else 1) + flat_labels[idx]
    keep = idx[batched_nms(flat_boxes[idx], flat_scores[idx], groups, nms_iou)]
    results = []
    for i in range(batch):
        mine = keep[image_index[keep] == i][:max_boxes]  # keep is sorted by score already
        results.append((flat_boxes[mine].cpu(), flat_scores[mine].cpu(), flat_labels[mine].cpu()))
    return results


def _tokenizer(loaded: LoadedModel):
    if loaded.directory is None:
        from samflow.models.common.tiny_text import tiny_tokenizer

        return tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(loaded.directory))


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> Owlv2Runner:
    from transformers import Owlv2ForObjectDetection

    if source.in_code:
        from samflow.models.detectors.tiny import in_code_config

        loaded = build_in_code(Owlv2ForObjectDetection, in_code_config("owlv2", source.kind), device, dtype)
    else:
        loaded = load_pretrained(Owlv2ForObjectDetection, source, device, dtype)
    config = read_json(loaded.directory / "preprocessor_config.json") if loaded.directory else {}
    norm = Normalisation(tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD)))
    return Owlv2Runner(loaded, _tokenizer(loaded), source.uri, device, dtype, norm)
