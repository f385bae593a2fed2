"""One training step of a SAM model and its held-out scoring, as a torch module.

`SamTrainStep.forward(pixels, masks)` encodes the images once, then for every image runs SAM's
interactive recipe on its masks: a first prompt (point or jittered box; a point prompt is
ambiguous, so three outputs and the best one trained), then ``correction_rounds`` rounds each
adding one click from the previous prediction's error. It returns the mean loss over masks and
rounds. The whole step is one forward, so DDP (`ray.train.torch.prepare_model`) wraps it as is.
The same step trains SAM (`SamModel`: one image embedding) and SAM 2 (`Sam2Model`: a list of
feature levels, the finer ones feeding its mask decoder's upscaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from samflow.train.losses import mask_iou, sam_loss
from samflow.train.prompts import (
    Prompts,
    centre_point,
    corrective_points,
    first_prompts,
)

# SAM's image embedding (B, C, h, w), or SAM 2's feature levels, finest first, coarsest last
Embeddings = torch.Tensor | list[torch.Tensor]


def input_size(model: nn.Module) -> int:
    """Side of the model's square input (SAM pads to it, SAM 2 resizes to it)."""
    if hasattr(model, "backbone_feature_sizes"):  # SAM 2
        from samflow.models.sam2.runner import input_side

        return input_side(model)
    return int(model.config.vision_config.image_size)


def _rows(embeddings: Embeddings, index) -> Embeddings:
    """The embeddings of some images (every level's rows)."""
    return [level[index] for level in embeddings] if isinstance(embeddings, list) else embeddings[index]


def _count(embeddings: Embeddings) -> int:
    return len(embeddings[-1]) if isinstance(embeddings, list) else len(embeddings)


@dataclass(frozen=True)
class StepParams:
    masks_per_image: int = 8
    box_fraction: float = 0.5
    box_jitter: float = 0.1
    correction_rounds: int = 2
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0


class SamTrainStep(nn.Module):
    def __init__(self, model: nn.Module, params: StepParams) -> None:
        super().__init__()
        self.model = model
        self.params = params
        self.image_size = input_size(model)

    def _embeddings(self, pixels: torch.Tensor) -> Embeddings:
        # the encoder itself, not `get_image_embeddings`: transformers runs that under no_grad,
        # which would leave a trained encoder (full or LoRA) without gradients
        if any(p.requires_grad for p in self.model.vision_encoder.parameters()):
            return self._encode(pixels)
        with torch.no_grad():  # a frozen encoder needs no activations kept for backward
            return self._encode(pixels)

    def _encode(self, pixels: torch.Tensor) -> Embeddings:
        if not hasattr(self.model, "backbone_feature_sizes"):  # SAM
            return self.model.vision_encoder(pixels)[0]
        # SAM 2, as its get_image_embeddings: the last level gets the no-memory embedding
        levels = list(self.model.get_image_features(pixels, return_dict=True).fpn_hidden_states)
        levels[-1] = levels[-1] + self.model.no_memory_embedding
        return [level.permute(1, 2, 0).view(len(pixels), -1, *size)
                for level, size in zip(levels, self.model.backbone_feature_sizes)]

    def _decode(self, embeddings: Embeddings, prompts: Prompts, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of B images and B x P prompts (flat, image-major) -> logits (B * P, K, L, L),
        iou (B * P, K): one decoder call for every image's prompts."""
        b = _count(embeddings)

        def per_image(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.reshape(b, -1, *t.shape[1:])

        out = self.model(image_embeddings=embeddings, input_points=per_image(prompts.points),
                         input_labels=per_image(prompts.labels), input_boxes=per_image(prompts.boxes),
                         multimask_output=multimask)
        return out.pred_masks.flatten(0, 1), out.iou_scores.flatten(0, 1)

    def forward(self, pixels: torch.Tensor, masks: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """pixels (B, 3, S, S) normalised; masks: per image (K, L, L) bool in the low-res frame.

        Each image with masks gets ``masks_per_image`` of them (drawn again when it has fewer),
        the first ``box_fraction`` of those prompted by a box, the rest by a point, so every
        image has as many prompts of each kind and a round is two decoder calls for the batch."""
        embeddings = self._embeddings(pixels)
        has_masks = [i for i, m in enumerate(masks) if bool(m.flatten(1).any(1).any())]
        if not has_masks:  # nothing to learn from: a zero that still reaches every trainable weight
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        chosen = torch.stack([self._choose(masks[i], generator) for i in has_masks])  # (B, M, L, L)
        embeddings = _rows(embeddings, has_masks)
        boxes = round(self.params.masks_per_image * self.params.box_fraction)
        losses = [self._interactive(embeddings, chosen[:, s].flatten(0, 1), kind, generator)
                  for s, kind in ((slice(0, boxes), True), (slice(boxes, None), False)) if chosen[:, s].shape[1]]
        return torch.cat(losses).mean()

    def _choose(self, image_masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``masks_per_image`` of the image's non-empty masks in random order."""
        keep = image_masks[image_masks.flatten(1).any(1)]
        want = self.params.masks_per_image
        order = torch.cat([torch.randperm(len(keep), generator=generator, device=generator.device)
                           for _ in range(-(-want // len(keep)))])
        return keep[order[:want]]

    def _interactive(self, embeddings: Embeddings, masks: torch.Tensor, box: bool,
                     generator: torch.Generator) -> torch.Tensor:
        """Losses (rounds x B x P,) of one prompt kind over the first prompt and the corrections."""
        p = self.params
        prompts = first_prompts(masks, box, self.image_size, p.box_jitter, generator)
        multimask = not box
        losses = []
        for _ in range(1 + p.correction_rounds):
            logits, iou = self._decode(embeddings, prompts, multimask)
            loss, best = sam_loss(logits, iou, masks, p.focal_weight, p.dice_weight, p.iou_weight)
            losses.append(loss)
            predicted = logits.detach()[torch.arange(len(best)), best] > 0
            prompts = prompts.with_point(*corrective_points(predicted, masks, self.image_size, generator))
            multimask = False  # later rounds are unambiguous: one output
        return torch.cat(losses)

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        """IoU of each mask's prediction from one point at its centre (best output by the IoU
        head), in the low-res frame: the held-out figure. Returns (sum of IoUs, count)."""
        embeddings = self._encode(pixels)
        total, count = 0.0, 0
        for index, image_masks in enumerate(masks):
            keep = image_masks[image_masks.flatten(1).any(1)]
            if not len(keep):
                continue
            labels = torch.ones(len(keep), 1, dtype=torch.long, device=keep.device)
            prompts = Prompts(centre_point(keep, self.image_size)[:, None], labels, None)
            logits, iou = self._decode(_rows(embeddings, [index]), prompts, multimask=True)
            best = logits[torch.arange(len(keep)), iou.argmax(1)] > 0
            total += float(mask_iou(best, keep).double().sum())
            count += len(keep)
        return torch.tensor([total, float(count)], dtype=torch.float64)
