"""Grounding DINO (transformers `GroundingDinoForObjectDetection`; MM-Grounding-DINO checkpoints
load the same way): open-vocabulary boxes for text queries, like OWLv2.

    runner = load_model("grounding_dino", "IDEA-Research/grounding-dino-tiny")   # or tiny://grounding_dino
    for det in runner.detect(images, ["a cat", "a traffic cone"], threshold=0.3):
        det.boxes, det.scores, det.labels          # xyxy px of the original image; labels = the queries

The queries become one caption, "[CLS] q1 . q2 . [SEP]" (lower-cased, as the checkpoints were
trained), so each query owns a known span of tokens; a box's score for a query is its best token
score inside that span, and its label is the best query. Images keep their aspect: the shorter
side is resized to the processor's `shortest_edge` (longer side capped at `longest_edge`),
ImageNet-normalised. Boxes are predicted normalised to the image, so they map back by (W, H).
Images of one size run as one batch and need no padding, so a batch gives what single calls give.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from samflow.models.common.boxes import cxcywh_to_xyxy
from samflow.models.detectors.detection import Detections, finish
from samflow.models.loading.hf import (
    HfRunner,
    LoadedModel,
    build_in_code,
    load_pretrained,
    local_model_dir,
    read_json,
)
from samflow.models.loading.registry import ModelSource
from samflow.models.common.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalisation,
    to_device,
)

DEFAULT_EDGES = (800, 1333)


class GroundingDinoRunner(HfRunner):
    family = "grounding_dino"

    def __init__(self, loaded: LoadedModel, tokenizer, uri: str, device: torch.device, dtype: torch.dtype,
                 edges: tuple[int, int], norm: Normalisation) -> None:
        super().__init__(loaded, uri, device, dtype)
        self.tokenizer = tokenizer
        self.edges = edges
        self.norm = norm
        self.max_text_len = int(self.model.config.max_text_len)
        self._captions: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def caption(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (1, T), spans (Q, T) bool: which tokens belong to each query), cached."""
        key = tuple(queries)
        if key not in self._captions:
            tok = self.tokenizer
            dot = tok.convert_tokens_to_ids(".")
            ids, owner = [tok.cls_token_id], [-1]
            for q, query in enumerate(key):
                pieces = tok(query.lower().strip().rstrip("."), add_special_tokens=False)["input_ids"]
                ids += [*pieces, dot]
                owner += [q] * len(pieces) + [-1]
            ids.append(tok.sep_token_id)
            owner.append(-1)
            if len(ids) > self.max_text_len:
                raise ValueError(f"the queries take {len(ids)} tokens; this model reads at most {self.max_text_len}")
            owner_t = torch.tensor(owner)
            spans = owner_t[None, :] == torch.arange(len(key))[:, None]
            self._captions[key] = (torch.tensor([ids]), spans)
        return self._captions[key]

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        """The DETR-family processors' rule: shorter side to `shortest_edge` unless the longer
        would pass `longest_edge`; the longer side truncated (as they do), never rounded."""
        size, longest = self.edges
        short_side, long_side = min(height, width), max(height, width)
        if long_side / short_side * size > longest:
            size = int(round(longest * short_side / long_side))
        if width < height:
            return int(size * height / width), size
        return size, int(size * width / height)

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Model input of images of one size: (B, 3, h, w), aspect kept, normalised."""
        stacked = torch.stack(to_device(images, self.device))
        resized = F.interpolate(stacked, size=self._resized(*images[0].shape[:2]), mode="bilinear", align_corners=False)
        return self.norm.apply(resized.clamp(0, 255)).to(self.dtype)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], queries: Sequence[str], threshold: float = 0.3,
               max_boxes: int = 100, nms_iou: float = 0.5) -> list[Detections]:
        if len(queries) == 0:
            raise ValueError("detect needs at least one text query")
        ids, spans = self.caption(queries)
        ids, spans = ids.to(self.device), spans.to(self.device)
        results: list[Detections | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[image.shape].append(i)
        for (height, width, _), indices in groups.items():
            pixels = self.pixels([images[i] for i in indices])
            batch = len(indices)
            out = self.model(pixel_values=pixels, input_ids=ids.expand(batch, -1),
                             attention_mask=torch.ones_like(ids).expand(batch, -1))
            token_scores = out.logits.float().sigmoid()[..., : ids.shape[1]]  # (B, Q, T)
            per_query = torch.where(spans[None, None], token_scores[:, :, None, :], 0.0).amax(dim=-1)  # (B, Q, nq)
            scores, labels = per_query.max(dim=-1)
            scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=scores.device)
            boxes = cxcywh_to_xyxy(out.pred_boxes.float()) * scale
            for j, i in enumerate(indices):
                results[i] = finish(boxes[j], scores[j], labels[j], list(queries), (height, width),
                                    threshold, nms_iou, max_boxes)
        return results  # type: ignore[return-value]


def _processor(loaded: LoadedModel) -> tuple[tuple[int, int], Normalisation]:
    if loaded.directory is None:
        from samflow.models.detectors.tiny import TINY_GROUNDING_EDGES

        return TINY_GROUNDING_EDGES, Normalisation(IMAGENET_MEAN, IMAGENET_STD)
    config = read_json(loaded.directory / "preprocessor_config.json")
    size = config.get("size") or {}
    edges = (int(size.get("shortest_edge", DEFAULT_EDGES[0])), int(size.get("longest_edge", DEFAULT_EDGES[1])))
    norm = Normalisation(tuple(config.get("image_mean", IMAGENET_MEAN)), tuple(config.get("image_std", IMAGENET_STD)))
    return edges, norm


def _tokenizer(loaded: LoadedModel):
    if loaded.directory is None:
        from samflow.models.detectors.tiny import tiny_bert_tokenizer

        return tiny_bert_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(loaded.directory))


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> GroundingDinoRunner:
    from transformers import GroundingDinoForObjectDetection

    if source.in_code:
        from samflow.models.detectors.tiny import in_code_config

        config = in_code_config("grounding_dino", source.kind)
        loaded = build_in_code(GroundingDinoForObjectDetection, config, device, dtype)
        if source.kind == "random":
            edges, norm = DEFAULT_EDGES, Normalisation(IMAGENET_MEAN, IMAGENET_STD)
        else:
            edges, norm = _processor(loaded)
    else:
        loaded = load_pretrained(_pretrained_class(source), source, device, dtype)
        edges, norm = _processor(loaded)
    return GroundingDinoRunner(loaded, _tokenizer(loaded), source.uri, device, dtype, edges, norm)


def _pretrained_class(source: ModelSource) -> type:
    """MM-Grounding-DINO checkpoints carry a learned bias and logit scale of their own: they load
    into their own class (in GroundingDinoForObjectDetection those weights would be dropped and
    the scores wrong)."""
    import transformers

    model_type = read_json(local_model_dir(source) / "config.json").get("model_type")
    if model_type == "mm-grounding-dino":
        return transformers.MMGroundingDinoForObjectDetection
    return transformers.GroundingDinoForObjectDetection
