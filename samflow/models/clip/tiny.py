"""In-code CLIP and SigLIP configs: tiny, and clip-vit-base-patch32 / siglip-base-patch16-224 at full size."""

from __future__ import annotations

from samflow.models.common.tiny_text import pick_config, reference_text_ids, tiny_text_config, tiny_vit_config


def tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(text_config=tiny_text_config(), vision_config=tiny_vit_config(), projection_dim=16)


def tiny_siglip_config():
    from transformers import SiglipConfig

    return SiglipConfig(text_config=tiny_text_config(), vision_config=tiny_vit_config())


def _reference_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(text_config=reference_text_ids())


def _reference_siglip_config():
    from transformers import SiglipConfig

    return SiglipConfig(text_config=reference_text_ids())


def in_code_config(name: str, kind: str):
    """name: "clip" or "siglip"."""
    return pick_config({"clip": tiny_clip_config, "siglip": tiny_siglip_config},
                       {"clip": _reference_clip_config, "siglip": _reference_siglip_config}, name, kind)
