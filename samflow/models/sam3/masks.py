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

Per pair, only the prompt-conditioned maps are materialised: the four phases come from one
convolution, and interleaving them into the output adds the image's term in the same pass, the
term broadcast over that image's pairs rather than copied to each.
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


def stacked_phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """`phase_kernels` as one (4 x C_out, C_in, 2, 2) kernel, phases (0, 0), (0, 1), (1, 0), (1, 1)."""
    return torch.cat([kernel for row in phase_kernels(weight) for kernel in row])


def upsampled_conv(coarse: torch.Tensor, kernels: torch.Tensor, weight: torch.Tensor, term: torch.Tensor,
                   runs: Sequence[ImageRun]) -> torch.Tensor:
    """``conv3x3(nearest_upsample(coarse)) + term[image]`` (padding 1, no bias) for each run's pairs
    at the term's size: by phases (``kernels`` from `stacked_phase_kernels`) when that size is
    exactly twice the coarse size, else by upsampling first."""
    n, _, h, w = coarse.shape
    size = tuple(term.shape[-2:])
    if size != (2 * h, 2 * w):
        out = F.conv2d(F.interpolate(coarse, size=size, mode="nearest"), weight, padding=1)
        for start, end, image in runs:
            out[start:end] += term[image]  # broadcast over the image's pairs, never copied per pair
        return out
    # One convolution gives all four phases (one GEMM with 4x the output channels instead of four
    # small ones, and one padded copy of the input instead of four): on the coarse map padded by
    # one all round, phase (a, b) at (i, j) is output (i + a, j + b); each phase leaves one row and
    # one column of that output unread.
    channels = weight.shape[0]
    phases = F.conv2d(F.pad(coarse, (1, 1, 1, 1)), kernels)
    out = coarse.new_empty(n, channels, h, 2, w, 2)  # [.., i, a, j, b] is output pixel [2i + a, 2j + b]
    for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        phase = phases[:, k * channels:(k + 1) * channels, a:a + h, b:b + w]
        for start, end, image in runs:
            # interleaving and adding the image's term in one pass over the output
            torch.add(phase[start:end], term[image].view(channels, h, 2, w, 2)[:, :, a, :, b],
                      out=out[start:end, :, :, a, :, b])
    return out.view(n, channels, 2 * h, 2 * w)


class FactoredMaskDecoder:
    """Runs a loaded `Sam3MaskDecoder`'s weights in the factored form above (inference only)."""

    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder
        pixel = decoder.pixel_decoder
        for conv in pixel.conv_layers:
            if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
                raise ValueError("the factored SAM 3 mask decoder expects 3x3 convolutions, stride 1, padding 1")
        # folded in float32: sums of bf16 weights would round twice
        self._kernels = [stacked_phase_kernels(conv.weight.float()).to(conv.weight.dtype) for conv in pixel.conv_layers]

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
            x = F.relu_(norm(upsampled_conv(x, kernels, conv.weight, term, runs)))
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
