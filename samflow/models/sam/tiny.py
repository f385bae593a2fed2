"""In-code SAM configs: tiny (a toy ViT at 64 px) and the published sam-vit-base at full size."""

from __future__ import annotations

from samflow.models.common.tiny_text import pick_config


def tiny_sam_config():
    from transformers import SamConfig

    return SamConfig(
        vision_config=dict(
            hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
            image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=16, mlp_dim=64,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )


def _reference_sam_config():
    from transformers import SamConfig

    return SamConfig()


def in_code_config(name: str, kind: str):
    return pick_config({"sam": tiny_sam_config}, {"sam": _reference_sam_config}, name, kind)
