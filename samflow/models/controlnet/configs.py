"""In-code configs of the SD + ControlNet parts: ``tiny`` (tests, dry runs) and ``random``
(Stable Diffusion 1.5's architecture at full size, for benchmarks without downloads).

The text encoder keeps samflow's in-code CLIP tokenizer (``samflow.models.common.tiny_text``): a character
vocabulary whose special-token ids the text configs name, so prompts tokenize offline.
"""

from __future__ import annotations

from typing import Any

from samflow.models.common.tiny_text import TINY_BOS_ID, TINY_EOS_ID, TINY_TEXT_POSITIONS, TINY_VOCAB_SIZE

SD15_TEXT_POSITIONS = 77  # CLIP ViT-L/14's text length, as SD 1.5 was trained with


def _text_ids() -> dict[str, int]:
    return dict(bos_token_id=TINY_BOS_ID, eos_token_id=TINY_EOS_ID, pad_token_id=TINY_EOS_ID)


def _unet_blocks(width: int, attention: int) -> dict[str, Any]:
    """UNet / ControlNet down path shared by the pair (the ControlNet mirrors the U-Net's encoder)."""
    return dict(block_out_channels=(width, 2 * width), layers_per_block=1, cross_attention_dim=attention,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=2, norm_num_groups=4)


def tiny_parts() -> dict[str, dict[str, Any]]:
    """Configs of a pair that runs a 64x64 image in well under a second on a CPU: the VAE halves
    the image once, the ControlNet's condition embedding halves it once too (they must agree)."""
    blocks = _unet_blocks(8, 16)
    return {
        "unet": dict(blocks, sample_size=32, in_channels=4, out_channels=4,
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
        "controlnet": dict(blocks, in_channels=4, conditioning_embedding_out_channels=(8, 16)),
        "vae": dict(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    sample_size=64),
        "text_encoder": dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=TINY_TEXT_POSITIONS, **_text_ids()),
    }


def sd15_parts() -> dict[str, dict[str, Any]]:
    """Stable Diffusion 1.5 with a ControlNet 1.1 (the diffusers classes' defaults are SD 1.x's,
    but for the text width, 768, and the VAE's four levels)."""
    return {
        "unet": dict(sample_size=64, cross_attention_dim=768),
        "controlnet": dict(cross_attention_dim=768),
        "vae": dict(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=512,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
        "text_encoder": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, max_position_embeddings=SD15_TEXT_POSITIONS,
                             hidden_act="quick_gelu", **_text_ids()),
    }


def in_code_parts(kind: str) -> dict[str, dict[str, Any]]:
    return tiny_parts() if kind == "tiny" else sd15_parts()


def text_positions(kind: str) -> int:
    return TINY_TEXT_POSITIONS if kind == "tiny" else SD15_TEXT_POSITIONS
