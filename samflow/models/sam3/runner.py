"""SAM 3 (transformers `Sam3Model`): every instance of every text concept, many prompts per image.

    runner = load_model("sam3", "facebook/sam3")                    # or tiny://sam3, random://sam3
    found = runner.segment(images, ["car", "person with helmet"], score_thresh=0.5)
    found[i][p].scores, .boxes, .segmentations                       # image i, prompt p

transformers pairs images and texts one to one. Here the vision encoder (the ViT, most of the
cost) runs ONCE per image, and the prompt-conditioned heads (DETR encoder / decoder, mask decoder)
run on (image, prompt) pairs, a chunk at a time. A pair gets only the coarsest FPN level (the one
the DETR encoder reads), broadcast when the chunk's pairs share an image; the finer levels enter
the mask head as per-image terms, broadcast over the image's pairs (`masks.ImageTerms`). Text features are computed once per prompt and cached on the runner, so a vocabulary
is encoded once per actor.

Exemplars (visual prompts, for concepts words describe badly): ``runner.set_exemplars({"gear":
[(reference_image, boxes_xyxy)]})`` encodes the boxes with SAM 3's geometry encoder on the
reference image's features (once), and the concept's prompt becomes its text tokens followed by
those box tokens, for every image. (SAM 3 pools exemplar boxes from the image being segmented;
here they come from reference images, so one set serves a whole dataset.)

Per pair: score = sigmoid(detection logit) x sigmoid(presence logit); instances above
`score_thresh` are kept, duplicates of the same prompt removed by NMS (box IoU > `nms_iou`), the
best `max_instances` kept; masks are upsampled to the output size, binarised at `mask_thresh`
(probability) and leave the device as COCO RLE. Different prompts never suppress each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from samflow.models.amg import rle_torch
from samflow.models.amg.boxes import masks_to_boxes
from samflow.models.common.boxes import batched_nms
from samflow.models.loading.hf import (
    HfRunner,
    LoadedModel,
    build_in_code,
    load_pretrained,
    read_json,
)
from samflow.models.loading.registry import ModelLoadError, ModelSource
from samflow.models.common.preprocess import HALF, Normalisation, resize_square
from samflow.models.sam3.masks import FactoredMaskDecoder, ImageTerms, image_runs

if TYPE_CHECKING:
    from samflow.schemas import rle

TEXT_MAX_LENGTH = 32  # Sam3Processor pads every text prompt to 32 tokens
GATED_HINT = (
    "SAM 3 checkpoints on the Hugging Face Hub are gated: accept the licence at "
    "https://huggingface.co/facebook/sam3 and set HF_TOKEN (or run `hf auth login`)"
)


@dataclass
class ConceptInstances:
    """The instances of one prompt in one image, best first. ``boxes`` (N, 4) xyxy float32 are
    SAM 3's predicted boxes in output pixels; ``segmentations`` COCO RLEs at the output size,
    ``mask_boxes`` (N, 4) xyxy of the masks (inclusive max, SAM's convention), ``areas`` (N,)."""

    scores: np.ndarray
    boxes: np.ndarray
    segmentations: list[rle.Rle] = field(default_factory=list)
    mask_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def masks(self) -> np.ndarray:
        """(N, H, W) bool, decoded (tests and small images; the pipeline keeps RLE)."""
        # pycocotools: imported only where masks are decoded on the host
        from samflow.schemas import rle

        return np.stack([rle.decode(s) for s in self.segmentations]) if len(self) else np.zeros((0, 0, 0), bool)


@dataclass
class PairFeatures:
    """What the DETR encoder reads of (image, prompt) pairs: the coarsest FPN level and its
    position encoding, (N, C, h, w) each. The finer levels reach the mask head as per-image terms
    (`ImageTerms`), never per pair."""

    coarse: torch.Tensor
    position: torch.Tensor


@dataclass
class VisionFeatures:
    """The FPN levels the detector reads, fine to coarse, for a batch of images (on the device)."""

    hidden: tuple[torch.Tensor, ...]
    positions: tuple[torch.Tensor, ...]

    def pairs(self, image_index: Sequence[int]) -> PairFeatures:
        """The coarsest level for pairs whose image is ``image_index[k]``: a broadcast view when
        they are all of one image (the DETR encoder's flattening copies it once anyway), else one
        row per pair. Position encodings do not depend on the image: always broadcast."""
        coarse, position = self.hidden[-1], self.positions[-1]
        n = len(image_index)
        runs = image_runs(image_index)
        if len(runs) == 1:
            image = runs[0][2]
            rows = coarse[image:image + 1].expand(n, *coarse.shape[1:])
        else:
            rows = coarse.index_select(0, torch.as_tensor(image_index, device=coarse.device))
        return PairFeatures(rows, position[:1].expand(n, *position.shape[1:]))


@dataclass
class _Text:
    features: torch.Tensor  # (P, L, D) projected token features
    mask: torch.Tensor  # (P, L) long attention mask


class Sam3Runner(HfRunner):
    family = "sam3"

    def __init__(self, loaded: LoadedModel, tokenizer, uri: str, device: torch.device, dtype: torch.dtype,
                 norm: Normalisation, pairs_per_decode: int = 16):
        super().__init__(loaded, uri, device, dtype)
        self.tokenizer = tokenizer
        self.norm = norm
        self.image_size = int(self.model.config.vision_config.image_size)
        self.pairs_per_decode = pairs_per_decode
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._exemplars: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._mask_head = FactoredMaskDecoder(self.model.mask_decoder)

    # -- encoders -------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_images(self, images: Sequence[np.ndarray]) -> VisionFeatures:
        """The vision encoder, once for the whole batch (images resized to image_size square)."""
        if len(images) == 0:
            raise ValueError("encode_images needs at least one image")
        size = (self.image_size, self.image_size)
        pixels = resize_square(images, size, self.norm, self.device, self.dtype)
        out = self.model.get_vision_features(pixel_values=pixels)
        return VisionFeatures(tuple(out.fpn_hidden_states[:-1]), tuple(out.fpn_position_encoding[:-1]))

    @torch.inference_mode()
    def encode_texts(self, prompts: Sequence[str]) -> _Text:
        """Projected token features of each prompt; each distinct prompt is encoded once per runner."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tokens = self.tokenizer(missing, padding="max_length", truncation=True,
                                    max_length=TEXT_MAX_LENGTH, return_tensors="pt")
            ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            features = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            for k, prompt in enumerate(missing):
                self._text_cache[prompt] = (features[k], mask[k])
        cached = [self._with_exemplars(p, *self._text_cache[p]) for p in prompts]
        length = max(f.shape[0] for f, _ in cached)
        features = torch.stack([F.pad(f, (0, 0, 0, length - f.shape[0])) for f, _ in cached])
        mask = torch.stack([F.pad(m, (0, length - m.shape[0])) for _, m in cached])  # padding: mask 0
        return _Text(features, mask)

    def _with_exemplars(self, prompt: str, features: torch.Tensor, mask: torch.Tensor):
        if prompt not in self._exemplars:
            return features, mask
        tokens, valid = self._exemplars[prompt]
        return torch.cat([features, tokens.to(features.dtype)]), torch.cat([mask, valid.to(mask.dtype)])

    @torch.inference_mode()
    def set_exemplars(self, exemplars: dict[str, Sequence[tuple[np.ndarray, np.ndarray]]]) -> None:
        """Visual prompts per concept: (reference image, (N, 4) xyxy pixel boxes) pairs. Replaces
        any set before; concepts without exemplars stay text-only."""
        self._exemplars = {}
        for concept, references in exemplars.items():
            parts = [self.encode_boxes(image, boxes) for image, boxes in references]
            if parts:
                self._exemplars[concept] = (torch.cat([t for t, _ in parts]), torch.cat([m for _, m in parts]))

    @torch.inference_mode()
    def encode_boxes(self, image: np.ndarray, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Geometry tokens (G, D) and their validity (G,) of positive boxes on one image."""
        xyxy = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), device=self.device)
        if xyxy.shape[0] == 0:
            raise ValueError("an exemplar needs at least one box")
        h, w = image.shape[:2]
        xyxy = xyxy / torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
        cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)[None]
        vision = self.encode_images([image])
        n = cxcywh.shape[1]
        out = self.model.geometry_encoder(
            box_embeddings=cxcywh.to(self.dtype),
            box_mask=torch.ones(1, n, dtype=torch.bool, device=self.device),
            box_labels=torch.ones(1, n, dtype=torch.long, device=self.device),
            img_feats=vision.hidden, img_pos_embeds=vision.positions,
        )
        return out.last_hidden_state[0], out.attention_mask[0]

    # -- detection ------------------------------------------------------------------------

    @torch.inference_mode()
    def segment(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        *,
        score_thresh: float = 0.5,
        mask_thresh: float = 0.5,
        max_instances: int = 100,
        nms_iou: float = 0.5,
        output_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[list[ConceptInstances]]:
        """Instances of every prompt in every image: ``result[image][prompt]``.

        ``output_sizes`` (H, W) per image sets the frame of masks and boxes (default: each
        image's own size; the pipeline passes the original size of upscaled images).
        """
        if not prompts:
            raise ValueError("segment needs at least one prompt")
        if not 0.0 < mask_thresh < 1.0:
            raise ValueError(f"mask_thresh is a probability in (0, 1), got {mask_thresh}")
        sizes = list(output_sizes) if output_sizes is not None else [tuple(im.shape[:2]) for im in images]
        if len(sizes) != len(images):
            raise ValueError(f"{len(sizes)} output sizes for {len(images)} images")
        vision = self.encode_images(images)
        image_terms = ImageTerms(self._mask_head, vision.hidden)
        text = self.encode_texts(prompts)
        n_prompts = len(prompts)
        results: list[list[ConceptInstances]] = [[] for _ in images]
        total = len(images) * n_prompts
        for start in range(0, total, self.pairs_per_decode):
            pairs = range(start, min(start + self.pairs_per_decode, total))
            image_index = [k // n_prompts for k in pairs]
            found = self._chunk(vision, image_terms, text, image_index, [k % n_prompts for k in pairs],
                                [sizes[i] for i in image_index], score_thresh, mask_thresh, max_instances, nms_iou)
            for i, instances in zip(image_index, found):
                results[i].append(instances)
        return results

    def _chunk(self, vision: VisionFeatures, image_terms: ImageTerms, text: _Text, image_index: list[int],
               prompt_index: list[int], sizes: list[tuple[int, int]], score_thresh: float, mask_thresh: float,
               max_instances: int, nms_iou: float) -> list[ConceptInstances]:
        """One chunk of pairs, pair k of image ``image_index[k]`` and prompt ``prompt_index[k]``:
        all the memory a chunk holds is allocated and freed here (bench/concepts.py measures it)."""
        prompts = torch.tensor(prompt_index, device=self.device)
        return self._pairs(vision.pairs(image_index), image_terms, image_index, text.features.index_select(0, prompts),
                           text.mask.index_select(0, prompts), sizes, score_thresh, mask_thresh, max_instances, nms_iou)

    def _pairs(self, vision: PairFeatures, image_terms: ImageTerms, image_index: list[int],
               text_features: torch.Tensor, text_mask: torch.Tensor, sizes: list[tuple[int, int]],
               score_thresh: float, mask_thresh: float, max_instances: int, nms_iou: float) -> list[ConceptInstances]:
        """Sam3Model.forward's steps, split: detect every pair, select instances, then run the
        mask decoder (over half of the heads' cost) only for pairs where something was found, and
        only for the queries kept. Pair k is of image ``image_index[k]``."""
        detection = self._detect(vision, text_features, text_mask)
        chosen = self._select(detection, sizes, score_thresh, max_instances, nms_iou)
        with_masks = [k for k, (query, _, _) in enumerate(chosen) if len(query)]
        logits = self._mask_logits(detection, image_terms, image_index, text_features, text_mask, with_masks,
                                   [chosen[k][0] for k in with_masks])
        by_pair = dict(zip(with_masks, logits))
        kept = []
        for k, (query, scores, boxes) in enumerate(chosen):
            low_res = by_pair[k] if k in by_pair else detection["scores"].new_zeros(0, 1, 1)
            masks = _binary_masks(low_res, sizes[k], mask_thresh)
            nonempty = masks.flatten(1).any(dim=1)  # an instance whose mask vanished is no instance
            kept.append((masks[nonempty], scores[nonempty], boxes[nonempty]))
        return _encode(kept, sizes)

    def _detect(self, vision: PairFeatures, text_features: torch.Tensor,
                text_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """DETR encoder and decoder, boxes and scores of the last decoder layer (as forward does)."""
        from transformers.models.sam3.modeling_sam3 import (
            box_cxcywh_to_xyxy,
            inverse_sigmoid,
        )

        model = self.model
        mask = text_mask.bool()
        encoded = model.detr_encoder(vision_features=[vision.coarse], text_features=text_features,
                                     vision_pos_embeds=[vision.position], text_mask=mask)
        decoded = model.detr_decoder(vision_features=encoded.last_hidden_state, text_features=encoded.text_features,
                                     vision_pos_encoding=encoded.pos_embeds_flattened, text_mask=mask,
                                     spatial_shapes=encoded.spatial_shapes)
        hidden = decoded.intermediate_hidden_states[-1:]
        offsets = model.detr_decoder.box_head(hidden)[-1]
        boxes = box_cxcywh_to_xyxy((inverse_sigmoid(decoded.reference_boxes[-1]) + offsets).sigmoid())
        logits = model.dot_product_scoring(decoder_hidden_states=hidden, text_features=encoded.text_features,
                                           text_mask=mask).squeeze(-1)[-1]
        scores = logits.float().sigmoid() * decoded.presence_logits[-1].float().sigmoid()
        return {"scores": scores, "boxes": boxes.float(), "queries": hidden[-1], "encoded": encoded.last_hidden_state,
                "coarse_size": tuple(vision.coarse.shape[-2:])}

    def _mask_logits(self, detection: dict, image_terms: ImageTerms, image_index: list[int],
                     text_features: torch.Tensor, text_mask: torch.Tensor, pairs: list[int],
                     queries: list[torch.Tensor]) -> list[torch.Tensor]:
        """Low-res mask logits (n, h, w) of the listed pairs' listed queries only (sam3_masks)."""
        if not pairs:
            return []
        index = torch.as_tensor(pairs, device=self.device)
        head = self._mask_head
        runs = image_runs([image_index[k] for k in pairs])
        pixels = head.pixel_embeddings(detection["encoded"].index_select(0, index), text_features.index_select(0, index),
                                       text_mask.bool().index_select(0, index), image_terms.per_image(), runs,
                                       detection["coarse_size"])
        return head.mask_logits(detection["queries"].index_select(0, index), queries, pixels)

    @staticmethod
    def _select(detection: dict[str, torch.Tensor], sizes: list[tuple[int, int]], score_thresh: float,
                max_instances: int, nms_iou: float) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per pair: (queries, scores, xyxy pixel boxes) above the threshold, NMS'd, capped, best first."""
        scores = detection["scores"]  # (N, Q)
        hw = torch.tensor(sizes, dtype=torch.float32, device=scores.device)
        scale = hw.flip(-1).repeat(1, 2)[:, None, :]  # (N, 1, 4) as (w, h, w, h)
        boxes = torch.minimum((detection["boxes"] * scale).clamp(min=0), scale)  # clipped to the image
        n_pairs, n_queries = scores.shape
        pair_of = torch.arange(n_pairs, device=scores.device)[:, None].expand(n_pairs, n_queries).reshape(-1)
        flat = (scores.reshape(-1) > score_thresh).nonzero().squeeze(1)
        keep = flat[batched_nms(boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat], pair_of[flat], nms_iou)]
        chosen = []
        for k in range(n_pairs):
            query = keep[pair_of[keep] == k][:max_instances] % n_queries  # keep is sorted by score
            chosen.append((query, scores[k, query], boxes[k, query]))
        return chosen


def _binary_masks(low_res: torch.Tensor, hw: tuple[int, int], mask_thresh: float) -> torch.Tensor:
    """(n, h, w) mask logits -> (n, H, W) bool at the output size."""
    if not low_res.shape[0]:
        return torch.zeros(0, *hw, dtype=torch.bool, device=low_res.device)
    logits = F.interpolate(low_res.float()[None], size=hw, mode="bilinear", align_corners=False)[0]
    return logits.sigmoid() > mask_thresh


def _encode(kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
            sizes: list[tuple[int, int]]) -> list[ConceptInstances]:
    """ConceptInstances per pair; the masks of all pairs of one output size are RLE-encoded in
    one call (on a GPU the RLE's cost is per call, not per mask)."""
    found: list[ConceptInstances | None] = [None] * len(kept)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(k)
    for (h, w), pairs in groups.items():
        masks = torch.cat([kept[k][0] for k in pairs])
        strings, areas = rle_torch.encode(masks)
        areas = areas.cpu().numpy()
        mask_boxes = masks_to_boxes(masks).cpu().numpy()
        start = 0
        for k in pairs:
            _, scores, boxes = kept[k]
            end = start + len(scores)
            found[k] = ConceptInstances(
                scores=scores.cpu().numpy().astype(np.float32),
                boxes=boxes.cpu().numpy().astype(np.float32).reshape(-1, 4),
                segmentations=[{"size": [int(h), int(w)], "counts": c} for c in strings[start:end]],
                mask_boxes=mask_boxes[start:end],
                areas=areas[start:end],
            )
            start = end
    return found  # type: ignore[return-value]


def _tokenizer(loaded: LoadedModel):
    if loaded.directory is None:
        from samflow.models.common.tiny_text import tiny_tokenizer

        return tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(loaded.directory))


def _normalisation(loaded: LoadedModel) -> Normalisation:
    config = read_json(loaded.directory / "preprocessor_config.json") if loaded.directory else {}
    return Normalisation(tuple(config.get("image_mean", HALF)), tuple(config.get("image_std", HALF)))


def load_gated(model_class, source: ModelSource, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A SAM 3 checkpoint (detector or tracker); a Hub failure says how to get past the gate."""
    try:
        return load_pretrained(model_class, source, device, dtype)
    except ModelLoadError as exc:
        if source.kind != "hub":
            raise
        raise ModelLoadError(f"{exc}; {GATED_HINT}") from None


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> Sam3Runner:
    from transformers import Sam3Model

    if source.in_code:
        from samflow.models.sam3.tiny import in_code_config

        loaded = build_in_code(Sam3Model, in_code_config("sam3", source.kind), device, dtype)
    else:
        loaded = load_gated(Sam3Model, source, device, dtype)
    return Sam3Runner(loaded, _tokenizer(loaded), source.uri, device, dtype, _normalisation(loaded))
