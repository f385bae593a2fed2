"""SAM 3's mask decoder, factored so that (image, prompt) pairs pay only for what the prompt changes.

transformers' `Sam3MaskDecoder` runs, for every pair, an FPN over the image's backbone levels whose
coarsest level is the prompt-conditioned DETR encoder output::

    x = ReLU(GroupNorm(conv3x3(upsample2x(x) + lateral)))      # 72 -> 144 -> 288 px at 1008 px
    logits[q] = mask_embed(query_q) . conv1x1(x)                 # every one of 200 queries

Three exact rewrites (the same maths, float rounding aside) cut the per-pair work to ~40 % of it:

- a convolution is linear: ``conv(up(x) + lateral) = conv_without_bias(up(x)) + conv(lateral)``,
  and ``conv(lateral)`` depends on the image alone, so it runs once per image (`image_terms`);
- a 3x3 convolution of a 2x nearest upsampling is, per output phase (row and column parity), a
  2x2 convolution of the coarse map: 4 instead of 9 multiply-adds per output value;
- the 1x1 projection folds into the kept queries (``e . (P x + b) = (P^T e) . x + e . b``), so
  only instances that were kept pay for a mask, not all 200 queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ImageRun = tuple[int, int, int]  # (first pair, end pair, image index)


def phase_kernels(weight: torch.Tensor) -> list[list[torch.Tensor]]:
    """The four 2x2 kernels [row parity][column parity] equal to ``weight`` (3x3) applied to a 2x
    nearest upsampling. Output row 2i reads upsampled rows 2i-1, 2i, 2i+1 = coarse rows i-1, i, i;
    output row 2i+1 reads coarse rows i, i, i+1 (the same for columns)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"phase kernels need a 3x3 convolution, got {tuple(weight.shape[-2:])}")

    def fold(w: torch.Tensor, dim: int, parity: int) -> torch.Tensor:
        first, middle, last = w.unbind(dim)
        pair = (first, middle + last) if parity == 0 else (first + middle, last)
        return torch.stack(pair, dim)

    return [[fold(fold(weight, 2, a), 3, b).contiguous() for b in (0, 1)] for a in (0, 1)]


def upsampled_conv(coarse: torch.Tensor, kernels: list[list[torch.Tensor]], weight: torch.Tensor,
                   size: tuple[int, int]) -> torch.Tensor:
    """``conv3x3(nearest_upsample(coarse, size))`` without bias (padding 1): by phases when
    ``size`` is exactly twice the coarse size, else by upsampling first."""
    n, _, h, w = coarse.shape
    if tuple(size) != (2 * h, 2 * w):
        return F.conv2d(F.interpolate(coarse, size=size, mode="nearest"), weight, padding=1)
    # phase (a, b) reads coarse rows i-1..i (a=0) or i..i+1 (a=1): pad the side it reaches past
    phases = [[F.conv2d(F.pad(coarse, (1 - b, b, 1 - a, a)), kernels[a][b]) for b in (0, 1)] for a in (0, 1)]
    rows = [torch.stack(row, dim=-1) for row in phases]  # (n, c, h, w, 2) per row parity
    return torch.stack(rows, dim=3).reshape(n, -1, 2 * h, 2 * w)  # [.., i, a, j, b] -> [2i+a, 2j+b]


class FactoredMaskDecoder:
    """Runs a loaded `Sam3MaskDecoder`'s weights in the factored form above (inference only)."""

    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder
        pixel = decoder.pixel_decoder
        for conv in pixel.conv_layers:
            if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
                raise ValueError("the factored SAM 3 mask decoder expects 3x3 convolutions, stride 1, padding 1")
        # folded in float32: sums of bf16 weights would round twice
        self._kernels = [[[k.to(conv.weight.dtype) for k in row] for row in phase_kernels(conv.weight.float())]
                         for conv in pixel.conv_layers]

    def image_terms(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each FPN stage's convolution of its lateral (backbone) level, bias included, for a batch
        of images: ``levels`` fine to coarse, as the detector reads them; the coarsest is replaced
        by the encoder output per pair and has no term."""
        convs = self.decoder.pixel_decoder.conv_layers
        laterals = list(reversed(levels[:-1]))  # the stages run coarse to fine
        return [F.conv2d(lateral, conv.weight, conv.bias, padding=1) for conv, lateral in zip(convs, laterals)]

    def pixel_embeddings(self, encoder_hidden_states: torch.Tensor, prompt_features: torch.Tensor,
                         prompt_mask: torch.Tensor, terms: Sequence[torch.Tensor], runs: Sequence[ImageRun],
                         coarse_size: tuple[int, int]) -> torch.Tensor:
        """(P, C, H, W) per pair: the prompt cross-attention, then the FPN from ``terms`` (`image_terms`,
        one row per image) added to the pairs of each of ``runs``."""
        encoded = self._attend_prompt(encoder_hidden_states, prompt_features, prompt_mask)
        h, w = coarse_size
        x = encoded[:, : h * w].transpose(1, 2).reshape(len(encoded), -1, h, w)
        pixel = self.decoder.pixel_decoder
        for kernels, conv, norm, term in zip(self._kernels, pixel.conv_layers, pixel.norms, terms):
            x = upsampled_conv(x, kernels, conv.weight, term.shape[-2:])
            for start, end, image in runs:
                # broadcast over the image's pairs, in place: a per-pair copy of the term would cost
                # as much memory traffic as the add itself
                x[start:end] += term[image]
            x = F.relu_(norm(x))
        return x

    def mask_logits(self, queries: torch.Tensor, kept: Sequence[torch.Tensor],
                    pixels: torch.Tensor) -> list[torch.Tensor]:
        """Per pair k: (len(kept[k]), H, W) mask logits of its kept queries only."""
        projection = self.decoder.instance_projection
        weight = projection.weight.flatten(1)  # (C_out, C_in)
        out = []
        for k, index in enumerate(kept):
            embedded = self.decoder.mask_embedder(queries[k].index_select(0, index))  # (n, C_out)
            logits = torch.einsum("nc,chw->nhw", embedded @ weight, pixels[k])
            if projection.bias is not None:
                logits = logits + (embedded @ projection.bias)[:, None, None]
            out.append(logits)
        return out

    def _attend_prompt(self, encoder_hidden_states: torch.Tensor, prompt_features: torch.Tensor,
                       prompt_mask: torch.Tensor) -> torch.Tensor:
        """The decoder's prompt cross-attention block (encoder tokens attend to the prompt)."""
        from transformers.masking_utils import create_bidirectional_mask

        decoder = self.decoder
        normed = decoder.prompt_cross_attn_norm(encoder_hidden_states)
        mask = create_bidirectional_mask(config=decoder.config, inputs_embeds=normed,
                                         encoder_hidden_states=prompt_features, attention_mask=prompt_mask)
        attended, _ = decoder.prompt_cross_attn(query=normed, key=prompt_features, value=prompt_features,
                                                attention_mask=mask)
        return encoder_hidden_states + attended


class ImageTerms:
    """`FactoredMaskDecoder.image_terms` of one batch of images, computed on first use (a batch
    where no prompt finds anything never needs them)."""

    def __init__(self, head: FactoredMaskDecoder, levels: Sequence[torch.Tensor]):
        self._head, self._levels = head, levels
        self._terms: list[torch.Tensor] | None = None

    def per_image(self) -> list[torch.Tensor]:
        """Each FPN stage's term, one row per image of the batch."""
        if self._terms is None:
            self._terms = self._head.image_terms(self._levels)
        return self._terms


def image_runs(image_index: Sequence[int]) -> list[ImageRun]:
    """(start, end, image) of each run of consecutive pairs of one image. Pairs are image-major, so
    a chunk of pairs holds one run per image it touches, and per-image tensors can be broadcast
    over a run instead of copied to every pair."""
    runs: list[ImageRun] = []
    for k, image in enumerate(image_index):
        if runs and runs[-1][2] == image:
            runs[-1] = (runs[-1][0], k + 1, image)
        else:
            runs.append((k, k + 1, image))
    return runs
