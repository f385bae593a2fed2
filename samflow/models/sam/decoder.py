"""SAM's prompt decoder for many prompts per image, without repeating the image per prompt.

transformers' `SamMaskDecoder` (like Meta's) copies the image embedding and its positional
encoding once per prompt and projects every copy. The same result (same weights, equal up to
float rounding) is computed here with far less work per prompt:

- prompt<->image attention is re-associated so the image tokens are never projected per prompt
  (token->image: scores ``(q W_k) . x``, output ``(A x) W_v^T``; image->token: scores
  ``x . (W_q^T k)``, output ``A (v W_o^T)``);
- the first block's image tokens, and the positional encoding's share of the scores, are shared
  by all prompts of an image: one matmul each, no copy per prompt;
- the upscaling runs as two matmuls with the bias fused, and the hypernetwork product comes
  before the pixels are put in raster order;
- prompts go in chunks written straight into the output: one or two on a CPU (the working set
  stays in cache), large ones on a GPU;
- the upscaling is local, so ``region`` asks for the top-left tokens only: the mask pixels that
  the image, not its padding, needs.

`decode_prompts(model, embeddings, sparse, dense, multimask)` returns what
`SamModel.forward(image_embeddings=...)` returns as (pred_masks, iou_scores). SAM 2's decoder
(`Sam2Model`) is the same maths plus an object-score token before the IoU token and the two
high-resolution skip features added in the upscaling (``high_res``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Image-token elements (prompts x HW x C) decoded together: 16 of SAM's prompts on a GPU, which
# needs large chunks to fill it (small models, whose cost is per-op overhead, go through in one
# chunk); 2 on a CPU, whose cache wants a small working set.
CHUNK_ELEMENTS = {"cuda": 16 * 64 * 64 * 256, "cpu": 2 * 64 * 64 * 256}
# Upscaled features (prompts x tokens x 16 pixels x C / 8 channels) made at once on a CPU: 16
# token rows of SAM's, a block that stays in cache (the whole upscaling at once does not).
UPSCALE_BLOCK_ELEMENTS = {"cpu": 2 * 16 * 64 * 16 * 32}


def decode_prompts(
    model, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, multimask: bool,
    chunk: int | None = None, region: tuple[int, int] | None = None,
    high_res: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """embeddings (B, C, h, w), sparse (B, P, T, C), dense (B or 1, C, h, w) ->
    (masks (B, P, K, 4 rows, 4 cols), iou (B, P, K)), K = 3 with ``multimask`` else 1.

    ``region``: (rows, cols) of image tokens whose mask pixels to make, from the top left
    (default all: (h, w)). ``chunk``: prompts per pass (default: as many as CHUNK_ELEMENTS
    allows on the device). ``high_res``: SAM 2's skip features, (B, C / 8, 4h, 4w) and
    (B, C / 4, 2h, 2w), already projected (``Sam2Model.get_image_embeddings`` gives them so)."""
    device_kind = "cuda" if embeddings.device.type == "cuda" else "cpu"
    chunk = chunk or max(1, CHUNK_ELEMENTS[device_kind] // embeddings[0].numel())
    pos = model.get_image_wide_positional_embeddings().to(embeddings.dtype)[0]
    pos = pos.flatten(1).transpose(0, 1).contiguous()  # (HW, C)
    decoder = model.mask_decoder
    upscale = _Upscale(decoder, UPSCALE_BLOCK_ELEMENTS.get(device_kind))
    batch, prompts = sparse.shape[:2]
    h, w = embeddings.shape[-2:]
    rows, cols = region or (h, w)
    if not (0 < rows <= h and 0 < cols <= w):
        raise ValueError(f"region {region} is not within the {h} x {w} image tokens")
    k = decoder.num_mask_tokens - 1 if multimask else 1
    # every chunk's masks go straight to their place in the output (no concatenation copies)
    masks = torch.empty(batch, prompts, k, 4 * rows, 4 * cols, dtype=embeddings.dtype, device=embeddings.device)
    ious = torch.empty(batch, prompts, k, dtype=embeddings.dtype, device=embeddings.device)
    for b in range(batch):
        src = (embeddings[b] + dense[b if dense.shape[0] > 1 else 0]).flatten(1).transpose(0, 1).contiguous()
        skips = _skip_layout(high_res[0][b], high_res[1][b], h, w) if high_res is not None else None
        for s in range(0, prompts, chunk):
            ious[b, s : s + chunk] = _decode_chunk(decoder, upscale, src, pos, sparse[b, s : s + chunk],
                                                   multimask, (h, w, rows, cols), masks[b, s : s + chunk], skips)
    return masks, ious


def _skip_layout(s0: torch.Tensor, s1: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's skip features laid out like the upscaling's outputs, one row per image token:
    s1 (C1, 2h, 2w) -> (h, w, 4 [a b], C1); s0 (C2, 4h, 4w) -> (h, w, 4 [a b], 4 [a' b'] * C2),
    pixel (2i + a, 2j + b) and (4i + 2a + a', 4j + 2b + b') of token (i, j)."""
    c1, c0 = s1.shape[0], s0.shape[0]
    s1 = s1.view(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h, w, 4, c1)
    s0 = s0.view(c0, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(h, w, 4, 4 * c0)
    return s0, s1


def _decode_chunk(decoder, upscale: "_Upscale", src: torch.Tensor, pos: torch.Tensor, sparse: torch.Tensor,
                  multimask: bool, grid: tuple[int, int, int, int], out: torch.Tensor,
                  skips: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Decodes one chunk of prompts: masks written to ``out`` (p, K, 4 rows, 4 cols); returns IoU
    (p, K). ``grid``: (h, w) image tokens, (rows, cols) of them upscaled."""
    p = sparse.shape[0]
    # SAM 2 puts its object-score token first; the IoU and mask tokens follow as in SAM
    leading = [decoder.obj_score_token.weight] if hasattr(decoder, "obj_score_token") else []
    iou_at = len(leading)
    output_tokens = torch.cat([*leading, decoder.iou_token.weight, decoder.mask_tokens.weight]).to(sparse.dtype)
    tokens = torch.cat([output_tokens.expand(p, -1, -1), sparse], dim=1)  # (p, N, C)
    queries, keys = tokens, src[None]  # keys: (1, HW, C) while shared by all prompts
    for layer in decoder.transformer.layers:
        queries, keys = _two_way_block(layer, queries, keys, tokens, pos)
    transformer = decoder.transformer
    attn = _token_to_image(transformer.final_attn_token_to_image, queries + tokens, keys, pos)
    queries = transformer.layer_norm_final_attn(queries + attn)
    selected = slice(1, None) if multimask else slice(0, 1)
    mask_tokens = queries[:, iou_at + 1 : iou_at + 1 + decoder.num_mask_tokens][:, selected]
    first_mlp = 1 if multimask else 0
    hyper = torch.stack([decoder.output_hypernetworks_mlps[first_mlp + i](mask_tokens[:, i])
                         for i in range(mask_tokens.shape[1])], dim=1)  # (p, K, C / 8)
    upscale(keys, hyper, grid, out, skips)
    return decoder.iou_prediction_head(queries[:, iou_at])[:, selected]


def _two_way_block(layer, queries: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor,
                   pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # self-attention of the prompt tokens (small: the library module as is)
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(query=queries[None], key=queries[None], value=queries[None])[0][0]
    else:
        q = (queries + tokens)[None]
        queries = queries + layer.self_attn(query=q, key=q, value=queries[None])[0][0]
    queries = layer.layer_norm1(queries)
    # the image tokens + pos serve as keys (token->image) and queries (image->token)
    attn = _token_to_image(layer.cross_attn_token_to_image, queries + tokens, keys, pos)
    queries = layer.layer_norm2(queries + attn)
    queries = layer.layer_norm3(queries + layer.mlp(queries))
    keys = _image_to_token(layer.cross_attn_image_to_token, keys, pos, queries + tokens, queries)
    keys = layer.layer_norm4(keys)  # (p, HW, C): per prompt from here on
    return queries, keys


def _out_proj(attention) -> torch.nn.Linear:
    return attention.o_proj if hasattr(attention, "o_proj") else attention.out_proj  # SAM 2's name, SAM's


def _head_weights(linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear(C -> heads * d) as (heads, d, C) weight and (heads, d) bias."""
    out, c = linear.weight.shape
    return linear.weight.view(heads, out // heads, c), linear.bias.view(heads, out // heads)


def _scores(per_prompt: torch.Tensor, image: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(p, M, C) x image tokens + pos ((p or 1, HW, C) + (HW, C)) -> (p, M, HW). Shared image
    tokens take one matmul for all prompts. Per-prompt ones never get pos added: its part of
    the scores is one (p * M, C) x (C, HW) matmul for all prompts, summed in by the per-prompt
    matmul, instead of a (HW, C) sum per prompt (memory traffic that cost more than the product)."""
    p, m, c = per_prompt.shape
    flat = per_prompt.reshape(p * m, c)
    if image.shape[0] == 1:
        return (flat @ (image[0] + pos).t()).view(p, m, -1)
    from_pos = (flat @ pos.t()).view(p, m, -1)
    return torch.baddbmm(from_pos, per_prompt, image.transpose(1, 2))


def _token_to_image(attention, token_q: torch.Tensor, image: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """SamAttention(query=tokens, key=image + pos, value=image): (p, N, C)."""
    heads = attention.num_attention_heads
    p, n, _ = token_q.shape
    q = F.linear(token_q, attention.q_proj.weight, attention.q_proj.bias).unflatten(-1, (heads, -1))
    w_k, _ = _head_weights(attention.k_proj, heads)  # the key bias shifts every score of a row: no effect
    reach = torch.einsum("pnhd,hdc->phnc", q, w_k).flatten(1, 2) * attention.scaling  # (p, heads * N, C)
    weights = _scores(reach, image, pos).softmax(dim=-1)  # (p, heads * N, HW)
    if image.shape[0] == 1:
        pooled = (weights.flatten(0, 1) @ image[0]).view(p, heads, n, -1)
    else:
        pooled = torch.bmm(weights, image).view(p, heads, n, -1)  # (p, heads, N, C)
    w_v, b_v = _head_weights(attention.v_proj, heads)
    values = torch.einsum("phnc,hdc->pnhd", pooled, w_v) + b_v  # rows of weights sum to 1
    out_proj = _out_proj(attention)
    return F.linear(values.flatten(2), out_proj.weight, out_proj.bias)


def _image_to_token(attention, image: torch.Tensor, pos: torch.Tensor, token_k: torch.Tensor,
                    token_v: torch.Tensor) -> torch.Tensor:
    """``image`` + SamAttention(query=image + pos, key=tokens, value=tokens): (p, HW, C), the
    residual added by the same matmul (it reads the image tokens once)."""
    heads = attention.num_attention_heads
    p, n, _ = token_k.shape
    k = F.linear(token_k, attention.k_proj.weight, attention.k_proj.bias).unflatten(-1, (heads, -1))
    v = F.linear(token_v, attention.v_proj.weight, attention.v_proj.bias).unflatten(-1, (heads, -1))
    w_q, b_q = _head_weights(attention.q_proj, heads)
    reach = torch.einsum("pnhd,hdc->phnc", k, w_q).flatten(1, 2) * attention.scaling  # (p, heads * N, C)
    shift = torch.einsum("pnhd,hd->phn", k, b_q).reshape(p, heads * n, 1) * attention.scaling
    scores = _scores(reach, image, pos) + shift  # (p, heads * N, HW)
    weights = scores.view(p, heads, n, -1).softmax(dim=2).view(p, heads * n, -1)
    out_proj = _out_proj(attention)
    w_o = out_proj.weight.view(-1, heads, k.shape[-1])  # (C, heads, d)
    carried = torch.einsum("pnhd,chd->phnc", v, w_o).flatten(1, 2)  # (p, heads * N, C)
    # each head's weights sum to 1 per image token: the output bias rides along as bias / heads
    carried = carried + out_proj.bias / heads
    return torch.baddbmm(image, weights.transpose(1, 2), carried)


class _Upscale:
    """Two ConvTranspose2d(k=2, s=2) with LayerNorm + GELU on the image tokens, then the
    hypernetwork product: (p, HW, C) tokens, (p, K, C / 8) -> (p, K, 4 rows, 4 cols) masks.
    Weights reordered once so each convolution is one matmul with its bias, output channels
    last (where the LayerNorm and the product want them). With ``block_elements``, a few token
    rows at a time, so the upscaled features stay small."""

    def __init__(self, decoder, block_elements: int | None = None) -> None:
        conv1, conv2 = decoder.upscale_conv1, decoder.upscale_conv2
        self.c1, self.c2 = conv1.weight.shape[1], conv2.weight.shape[1]
        # (C_in, C_out, 2, 2) -> (4 * C_out, C_in), row (a * 2 + b) * C_out + o
        self.w1 = conv1.weight.permute(2, 3, 1, 0).reshape(4 * self.c1, -1)
        self.b1 = conv1.bias.repeat(4)
        self.w2 = conv2.weight.permute(2, 3, 1, 0).reshape(4 * self.c2, -1)
        self.b2 = conv2.bias.repeat(4)
        self.norm = decoder.upscale_layer_norm
        self.activation = decoder.activation
        self.block_elements = block_elements

    def __call__(self, keys: torch.Tensor, hyper: torch.Tensor, grid: tuple[int, int, int, int],
                 out: torch.Tensor, skips: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Writes the masks into ``out`` (p, K, 4 rows, 4 cols): the raster reordering is that copy.
        ``skips``: SAM 2's skip features in :func:`_skip_layout`'s layout."""
        p = keys.shape[0]
        h, w, rows, cols = grid
        tokens = keys.view(p, h, w, -1)[:, :rows, :cols]
        step = rows
        if self.block_elements:
            step = max(1, min(rows, self.block_elements // (p * cols * 16 * self.c2)))
        k = hyper.shape[1]
        out = out.view(p, k, rows, 2, 2, cols, 2, 2)
        for r in range(0, rows, step):
            block = tokens[:, r : r + step]
            n = block.shape[1]
            block_skips = None if skips is None else tuple(s[r : r + n, :cols].flatten(0, 1) for s in skips)
            out[:, :, r : r + n].copy_(self._masks(block.reshape(p, n * cols, -1), hyper, n, cols, block_skips))

    def _masks(self, tokens: torch.Tensor, hyper: torch.Tensor, rows: int, cols: int,
               skips: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """(p, rows * cols, C) tokens -> (p, K, rows, 2, 2, cols, 2, 2) masks, a permuted view."""
        p = tokens.shape[0]
        y = F.linear(tokens, self.w1, self.b1).unflatten(-1, (4, self.c1))  # (p, T, 4 [a b], c1)
        if skips is not None:
            y = y + skips[1]
        y = self.activation(F.layer_norm(y, (self.c1,), self.norm.weight, self.norm.bias, self.norm.eps))
        z = F.linear(y, self.w2, self.b2)  # (p, T, 4 [a b], 4 [a' b'] * c2)
        if skips is not None:
            z = z + skips[0]
        z = self.activation(z)
        masks = torch.bmm(z.view(p, -1, self.c2), hyper.transpose(1, 2))  # (p, T * 16, K)
        k = hyper.shape[1]
        return masks.view(p, rows, cols, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)  # p K i a a' j b b'
