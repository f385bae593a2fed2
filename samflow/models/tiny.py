"""In-code configs for `tiny://<family>` models and an offline tokenizer.

Tiny models use the same transformers classes as the real ones, only with small sizes, so the
runner code path is identical; weights are random (seeded in `hf.build_tiny`), outputs are
meaningless but deterministic. Sizes are picked so a batch runs well under a second on CPU.
"""

from __future__ import annotations

from functools import cache

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


@cache
def _byte_alphabet() -> tuple[str, ...]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2 / CLIP convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    extra = 0
    chars = {}
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def tiny_tokenizer():
    """A CLIP byte-level BPE tokenizer with a character vocabulary and no merges: every text
    tokenizes offline, one token per byte (the last byte of a word carries `</w>`)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for char in _byte_alphabet():
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    # specials last and highest, as in CLIP's real vocabulary (OWL-ViT pools the argmax id = eos)
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TINY_TEXT_POSITIONS)


TINY_VOCAB_SIZE = len(SPECIAL_TOKENS) + 2 * 256
TINY_BOS_ID, TINY_EOS_ID = 2 * 256, 2 * 256 + 1
TINY_TEXT_POSITIONS = 32


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


def _tiny_text_config() -> dict:
    return dict(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=TINY_TEXT_POSITIONS,
        bos_token_id=TINY_BOS_ID, eos_token_id=TINY_EOS_ID, pad_token_id=TINY_EOS_ID,
    )


def _tiny_vit_config(image_size: int = 32, patch_size: int = 8) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=image_size, patch_size=patch_size)


def tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(text_config=_tiny_text_config(), vision_config=_tiny_vit_config(), projection_dim=16)


def tiny_siglip_config():
    from transformers import SiglipConfig

    return SiglipConfig(text_config=_tiny_text_config(), vision_config=_tiny_vit_config())


def tiny_owlv2_config():
    from transformers import Owlv2Config

    # the class head compares projected text queries with image features mapped to the text
    # width, so projection_dim must equal the text hidden size (as in the real checkpoints)
    return Owlv2Config(text_config=_tiny_text_config(), vision_config=_tiny_vit_config(image_size=32, patch_size=4),
                       projection_dim=32)
