"""In-code DINOv2 configs: tiny, and dinov2-base at full size."""

from __future__ import annotations

from samflow.models.common.tiny_text import pick_config


def tiny_dinov2_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                        image_size=32, patch_size=8)


def _reference_dinov2_config():
    from transformers import Dinov2Config

    return Dinov2Config()


def in_code_config(name: str, kind: str):
    return pick_config({"dinov2": tiny_dinov2_config}, {"dinov2": _reference_dinov2_config}, name, kind)
