"""The text side shared by in-code models (tiny://, random://): an offline CLIP tokenizer and the
tiny text/ViT towers several families build on. Each family's own config lives in its `tiny.py`."""

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


def tiny_text_config() -> dict:
    return dict(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=TINY_TEXT_POSITIONS,
        bos_token_id=TINY_BOS_ID, eos_token_id=TINY_EOS_ID, pad_token_id=TINY_EOS_ID,
    )


def tiny_vit_config(image_size: int = 32, patch_size: int = 8) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=image_size, patch_size=patch_size)


def reference_text_ids() -> dict:
    """random:// text towers keep the in-code tokenizer's special-token ids, so pooling finds the
    end-of-text token."""
    return dict(bos_token_id=TINY_BOS_ID, eos_token_id=TINY_EOS_ID, pad_token_id=TINY_EOS_ID)


def pick_config(tiny: dict, reference: dict, name: str, kind: str):
    """`tiny[name]()` for tiny://, `reference[name]()` (full size) for random://."""
    table = tiny if kind == "tiny" else reference
    if name not in table:
        raise ValueError(f"no {kind} config for {name!r}")
    return table[name]()
