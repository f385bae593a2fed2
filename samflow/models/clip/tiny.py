"""In-code CLIP and SigLIP configs: tiny, and clip-vit-base-patch32 / siglip-base-patch16-224 at full size."""

from __future__ import annotations

from samflow.models.common.tiny_text import pick_config, reference_text_ids, tiny_text_config, tiny_vit_config


def tiny_clip_config():
    """The image tower sees the whole 32-px picture as one patch: a random ViT pools its patches
    into a bag of local colours, which made every picture's vector alike; one patch keeps the
    picture's layout, so distinct pictures get distinct vectors."""
    from transformers import CLIPConfig

    vision = tiny_vit_config(image_size=32, patch_size=32) | dict(hidden_size=64, intermediate_size=128)
    return CLIPConfig(text_config=tiny_text_config(), vision_config=vision, projection_dim=32)


def settle_in_code_clip(model) -> None:
    """Zero the class token and give positions HF's small scale: torch's N(0, 1) embedding init
    and a random class token are constants that outweigh the picture in the pooled vector."""
    import torch

    if not hasattr(model, "vision_model"):
        return
    embeddings = model.vision_model.embeddings
    with torch.no_grad():
        embeddings.class_embedding.zero_()
        embeddings.position_embedding.weight.mul_(0.02)
        embeddings.position_embedding.weight[0].zero_()


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
