"""Meta's original SAM / SAM 2 checkpoints, loaded into transformers' classes.

Users hold `sam_vit_{b,l,h}_*.pth` (segment-anything: a plain state dict) and
`sam2[.1]_hiera_{t,s,b+,l}.pt` (SAM 2: ``{"model": state dict}``). Both are read with
`torch.load(weights_only=True)` (never plain pickle), their keys renamed into the layout of
`SamModel` / `Sam2Model`, the architecture read off the tensor shapes, and loaded strictly: a
key that maps nowhere, or a model weight the checkpoint lacks, is an error naming the key.

    layout = meta_layout(state)                     # "sam" | "sam2" | None
    hf_state, report = map_meta_state(state, layout)
    config = sam_config_from_meta(state)            # or sam2_config_from_meta(state)

The report (``MappingReport.as_dict()``) is what `samflow models check` prints: the layout, the
variant, how many tensors were mapped, and which were dropped (SAM 2's video-only modules; the
image model does not use them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from samflow.models.loading.checkpoint import (
    PICKLE_SUFFIXES,
    read_state_dict,
    sha256_file,
)

# Rename rules, applied in order to every key (first the module prefix, then the parts).
_SAM_RULES: list[tuple[str, str]] = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^vision_encoder\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.layers.\1.layer_norm\2."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"^vision_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^vision_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^vision_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^vision_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^prompt_encoder\.point_embeddings\.(\d+)\.", r"prompt_encoder.point_embed.\1."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
]

_SAM2_RULES: list[tuple[str, str]] = [
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^vision_encoder\.backbone\.patch_embed\.proj\.", "vision_encoder.backbone.patch_embed.projection."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.backbone.blocks.\1.layer_norm\2."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.mlp\.layers\.0\.", r"vision_encoder.backbone.blocks.\1.mlp.proj_in."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.mlp\.layers\.1\.", r"vision_encoder.backbone.blocks.\1.mlp.proj_out."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^mask_decoder\.transformer\.(.*)\.out_proj\.", r"mask_decoder.transformer.\1.o_proj."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.0\.", r"mask_decoder.transformer.layers.\1.mlp.proj_in."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.1\.", r"mask_decoder.transformer.layers.\1.mlp.proj_out."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
]

# Heads of the decoder MLPs: Meta's `layers.0 .. layers.{d-1}` -> transformers' proj_in,
# layers.0 .. layers.{d-3}, proj_out (depth read from the checkpoint).
_HEAD_MLPS = r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.(\d+)\."

# SAM 2 modules only the video predictor uses (memory attention / encoder, object pointers,
# temporal encodings); the image model (Sam2Model) has no place for them.
_SAM2_VIDEO_ONLY = (
    "memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
    "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.", "no_obj_embed_spatial",
)
# segment-anything keeps the pixel normalisation as buffers; samflow normalises on its own
# (the same ImageNet mean / std).
_SAM_UNUSED = ("pixel_mean", "pixel_std")

# SAM 2 Hiera trunks (embed dim, blocks per stage) -> what the shapes do not tell.
_HIERA = {
    (96, (1, 2, 7, 2)): ("hiera_tiny", [1, 2, 4, 8], [5, 7, 9], [8, 4, 14, 7]),
    (96, (1, 2, 11, 2)): ("hiera_small", [1, 2, 4, 8], [7, 10, 13], [8, 4, 14, 7]),
    (112, (2, 3, 16, 3)): ("hiera_base_plus", [2, 4, 8, 16], [12, 16, 20], [8, 4, 14, 7]),
    (144, (2, 6, 36, 4)): ("hiera_large", [2, 4, 8, 16], [23, 33, 43], [8, 4, 16, 8]),
}
_SAM_VARIANTS = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}


class MetaCheckpointError(ValueError):
    """A Meta checkpoint whose keys or shapes do not fit the architecture (message names them)."""


@dataclass
class MappingReport:
    layout: str  # "meta-sam" | "meta-sam2"
    variant: str
    mapped: int = 0
    dropped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "variant": self.variant, "tensors_mapped": self.mapped,
                "tensors_dropped": len(self.dropped), "dropped_modules": sorted({_module(k) for k in self.dropped})}


def _module(key: str) -> str:
    return key.split(".")[0]


def unwrap(loaded: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """SAM 2 files wrap the state dict as ``{"model": ...}``; segment-anything's do not."""
    inner = loaded.get("model")
    return dict(inner) if isinstance(inner, Mapping) else dict(loaded)


def meta_layout(state: Mapping[str, Any]) -> str | None:
    if "image_encoder.trunk.patch_embed.proj.weight" in state and "sam_mask_decoder.iou_token.weight" in state:
        return "sam2"
    if "image_encoder.patch_embed.proj.weight" in state and "mask_decoder.iou_token.weight" in state:
        return "sam"
    return None


def read_meta_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, layout) of a checkpoint file; layout None when it is not Meta's."""
    state = unwrap(read_state_dict(path))
    return state, meta_layout(state)


def is_meta_file(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix in PICKLE_SUFFIXES


def map_meta_state(state: Mapping[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], MappingReport]:
    """Meta's keys -> transformers' keys (tensors shared, not copied)."""
    if layout == "sam":
        rules, unused, variant = _SAM_RULES, _SAM_UNUSED, sam_variant(state)
    elif layout == "sam2":
        rules, unused, variant = _SAM2_RULES, _SAM2_VIDEO_ONLY, _hiera_of(state)[0]
    else:
        raise MetaCheckpointError(f"unknown Meta checkpoint layout {layout!r}")
    report = MappingReport(f"meta-{layout}", variant)
    depths = _head_depths(state, layout)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(unused):
            report.dropped.append(key)
            continue
        out[_rename(key, rules, depths)] = tensor
    if layout == "sam2":
        _join_point_embeddings(out)
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    report.mapped = len(state) - len(report.dropped)
    return out, report


def _rename(key: str, rules: list[tuple[str, str]], depths: dict[str, int]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    match = re.match(_HEAD_MLPS, key)
    if match:
        head, i = match.group(1), int(match.group(2))
        last = depths[head] - 1
        part = "proj_in" if i == 0 else "proj_out" if i == last else f"layers.{i - 1}"
        key = key[: match.start(2) - len("layers.")] + part + key[match.end(2):]
    return key


def _head_depths(state: Mapping[str, torch.Tensor], layout: str) -> dict[str, int]:
    prefix = "mask_decoder." if layout == "sam" else "sam_mask_decoder."
    depths: dict[str, int] = {}
    for key in state:
        match = re.match(_HEAD_MLPS.replace(r"^mask_decoder\.", "^" + re.escape(prefix)), key)
        if match:
            depths[match.group(1)] = max(depths.get(match.group(1), 0), int(match.group(2)) + 1)
    return depths


def _join_point_embeddings(out: dict[str, torch.Tensor]) -> None:
    """SAM 2 stores one (1, C) embedding per point label; Sam2Model one (4, C) table."""
    pattern = re.compile(r"^prompt_encoder\.point_embeddings\.(\d+)\.weight$")
    parts = {int(m.group(1)): k for k in list(out) if (m := pattern.match(k))}
    if not parts:
        return
    out["prompt_encoder.point_embed.weight"] = torch.cat([out.pop(parts[i]) for i in sorted(parts)])


# -- architecture from shapes -------------------------------------------------------------------

def sam_variant(state: Mapping[str, torch.Tensor]) -> str:
    width = state["image_encoder.patch_embed.proj.weight"].shape[0]
    return _SAM_VARIANTS.get((width, _count_blocks(state, "image_encoder.blocks.")), f"vit_{width}x{_count_blocks(state, 'image_encoder.blocks.')}")


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    found = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def sam_config_from_meta(state: Mapping[str, torch.Tensor]):
    from transformers import SamConfig

    patch = state["image_encoder.patch_embed.proj.weight"]
    width, patch_size = patch.shape[0], patch.shape[-1]
    depth = _count_blocks(state, "image_encoder.blocks.")
    grid = state["image_encoder.pos_embed"].shape[1]
    rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
    global_blocks = [i for i, s in enumerate(rel) if s[0] == 2 * grid - 1]
    windowed = [s[0] for s in rel if s[0] != 2 * grid - 1]
    decoder_width = state["mask_decoder.iou_token.weight"].shape[1]
    return SamConfig(
        vision_config=dict(
            hidden_size=width, num_hidden_layers=depth, num_attention_heads=width // rel[0][1],
            image_size=grid * patch_size, patch_size=patch_size, global_attn_indexes=global_blocks,
            window_size=(windowed[0] + 1) // 2 if windowed else 14,
            output_channels=state["image_encoder.neck.0.weight"].shape[0],
            mlp_dim=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0],
            num_pos_feats=state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1],
        ),
        prompt_encoder_config=dict(
            hidden_size=decoder_width, image_size=grid * patch_size, patch_size=patch_size,
            mask_input_channels=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        ),
        mask_decoder_config=dict(
            hidden_size=decoder_width, num_hidden_layers=_count_blocks(state, "mask_decoder.transformer.layers."),
            mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            num_multimask_outputs=state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        ),
    )


def _hiera_of(state: Mapping[str, torch.Tensor]) -> tuple[str, list[int], list[int], list[int], list[int], list[int]]:
    """(variant, blocks per stage, dims per stage, heads, global blocks, window sizes)."""
    prefix = "image_encoder.trunk.blocks."
    depth = _count_blocks(state, prefix)
    dims = [state[f"{prefix}{i}.norm2.weight"].shape[0] for i in range(depth)]
    starts = [0] + [i for i in range(1, depth) if dims[i] != dims[i - 1]]
    blocks = [b - a for a, b in zip(starts, starts[1:] + [depth])]
    key = (dims[0], tuple(blocks))
    if key not in _HIERA:
        known = ", ".join(v[0] for v in _HIERA.values())
        raise MetaCheckpointError(
            f"SAM 2 trunk with width {dims[0]} and blocks per stage {blocks} is not a published Hiera "
            f"variant ({known})"
        )
    name, heads, global_blocks, windows = _HIERA[key]
    return name, blocks, [dims[s] for s in starts], heads, global_blocks, windows


def sam2_config_from_meta(state: Mapping[str, torch.Tensor]):
    from transformers import Sam2Config

    _, blocks, dims, heads, global_blocks, windows = _hiera_of(state)
    background = list(state["image_encoder.trunk.pos_embed"].shape[-2:])
    image_size = 1024  # every published SAM 2 / 2.1 checkpoint
    stride = 4
    sizes = [[image_size // (stride * 2**i)] * 2 for i in range(3)]
    backbone = dict(
        model_type="sam2_hiera_det_model", hidden_size=dims[0], num_attention_heads=heads[0],
        image_size=[image_size, image_size], blocks_per_stage=blocks, embed_dim_per_stage=dims,
        num_attention_heads_per_stage=heads, window_size_per_stage=windows, global_attention_blocks=global_blocks,
        window_positional_embedding_background_size=background,
    )
    vision = dict(model_type="sam2_vision_model", backbone_config=backbone, backbone_channel_list=dims[::-1],
                  backbone_feature_sizes=sizes,
                  fpn_hidden_size=state["image_encoder.neck.convs.0.conv.weight"].shape[0])
    return Sam2Config(vision_config=vision)


# -- loading ------------------------------------------------------------------------------------

def load_meta_checkpoint(family: str, path: str | Path, device: torch.device, dtype: torch.dtype):
    """A Meta checkpoint file of ``family`` ("sam" | "sam2") -> (LoadedModel, MappingReport)."""
    from transformers import Sam2Model, SamModel

    from samflow.models.loading.hf import LoadedModel

    state, layout = read_meta_checkpoint(path)
    if layout != family:
        found = f"a Meta {layout} checkpoint" if layout else "not a Meta SAM / SAM 2 checkpoint"
        raise MetaCheckpointError(f"{Path(path).name} is {found}, not {family}")
    model_cls, config = (SamModel, sam_config_from_meta(state)) if family == "sam" else (
        Sam2Model, sam2_config_from_meta(state))
    model, sha, report = load_meta_model(model_cls, config, path, device, dtype, layout, state)
    return LoadedModel(model, sha, None), report


def load_meta_model(model_cls: Any, config: Any, path: str | Path, device: torch.device, dtype: torch.dtype,
                    layout: str, state: Mapping[str, torch.Tensor]) -> tuple[Any, str, MappingReport]:
    """Build ``model_cls(config)`` and load the mapped ``state`` strictly. Returns the model
    (eval, on device/dtype), the file's sha256 and the mapping report."""
    from samflow.models.loading.hf import _with_sdpa

    mapped, report = map_meta_state(state, layout)
    model = _with_sdpa(model_cls._from_config, config=config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise MetaCheckpointError(
            f"{Path(path).name}: {report.layout} keys do not fit {model_cls.__name__} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(mapped[k].shape)]
    if bad:
        k = bad[0]
        raise MetaCheckpointError(
            f"{Path(path).name}: {k} has shape {tuple(mapped[k].shape)}, the model expects {tuple(expected[k].shape)}"
        )
    model.load_state_dict(mapped, strict=True)
    model.to(device=device, dtype=dtype).eval()
    return model, sha256_file(path), report
