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


def _tiny_sam2_parts(hidden: int = 32) -> dict:
    """Hiera backbone 64x64 input -> FPN levels 16x16, 8x8, 4x4 (image embedding 4x4, masks 16x16).
    The global-attention block is not a stage's first block (those pool queries by window size)."""
    backbone = dict(
        model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1, image_size=[64, 64],
        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 2, 2, 2],
        global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2],
    )
    vision = dict(model_type="sam2_vision_model", backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16],
                  backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=hidden)
    return dict(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=hidden, image_size=64, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )


def tiny_sam2_config():
    from transformers import Sam2Config

    return Sam2Config(**_tiny_sam2_parts())


def tiny_sam2_video_config():
    from transformers import Sam2VideoConfig

    # upstream fixes the memory width at 64 and splits object pointers into memory-width
    # chunks, so the model width must be a multiple > 64 (real: 256); 128 is the smallest
    hidden = 128
    return Sam2VideoConfig(
        **_tiny_sam2_parts(hidden), image_size=64, num_maskmem=3, max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=hidden, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[4, 4], memory_encoder_hidden_size=hidden, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden, memory_fuser_embed_dim=hidden, memory_fuser_intermediate_dim=64,
    )


def tiny_sam3_config():
    from transformers import Sam3Config

    # ViT 56x56 input, 7px patches -> 8x8 tokens; FPN levels 32, 16, 8 (masks 32x32); windows of
    # 4 with one global layer, as the real backbone alternates them
    backbone = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, image_size=56, patch_size=7, window_size=4, global_attn_indexes=[1],
                    pretrain_image_size=28)
    heads = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    return Sam3Config(
        vision_config=dict(backbone_config=backbone, fpn_hidden_size=32, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]]),
        text_config=dict(_tiny_text_config(), projection_dim=32),
        geometry_encoder_config=dict(heads, num_layers=1, roi_size=2),
        detr_encoder_config=dict(heads, num_layers=1),
        detr_decoder_config=dict(heads, num_layers=2, num_queries=16),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )


def tiny_sam3_tracker_video_config():
    """SAM 3's tracker (``Sam3TrackerVideoModel``) on a ViT like tiny SAM 3's at 28x28 input (7px
    patches: 4x4 tokens, as tiny SAM 2 video's embedding; FPN levels 16, 8, 4); memory sizes as
    tiny SAM 2 video's (width 128: see there)."""
    from transformers import Sam3TrackerVideoConfig

    hidden = 128
    backbone = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, image_size=28, patch_size=7, window_size=2, global_attn_indexes=[1],
                    pretrain_image_size=28)
    return Sam3TrackerVideoConfig(
        vision_config=dict(model_type="sam3_vision_model", backbone_config=backbone, fpn_hidden_size=hidden,
                           backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]]),
        prompt_encoder_config=dict(hidden_size=hidden, image_size=28, patch_size=7, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=28, num_maskmem=3, max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=hidden, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_encoder_hidden_size=hidden, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden, memory_fuser_embed_dim=hidden, memory_fuser_intermediate_dim=64,
    )


def tiny_dinov2_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                        image_size=32, patch_size=8)


TINY_DETECTOR_CLASSES = ("cat", "dog", "bird")


def tiny_detr_config():
    """RT-DETR v2 at toy width: a 4-stage basic-block ResNet, one encoder and two decoder layers (the heads tie across layers)."""
    from transformers import RTDetrV2Config

    labels = dict(enumerate(TINY_DETECTOR_CLASSES))
    backbone = dict(model_type="rt_detr_resnet", embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                    depths=[1, 1, 1, 1], layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    return RTDetrV2Config(
        backbone_config=backbone, encoder_hidden_dim=32, encoder_in_channels=[32, 64, 128], encoder_ffn_dim=64,
        encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
        decoder_attention_heads=2, decoder_layers=2, num_queries=20, num_denoising=0,
        id2label=labels, label2id={v: k for k, v in labels.items()},
    )


def tiny_dfine_config():
    """D-FINE at toy width (HGNetV2 backbone): the second real-time DETR architecture, for tests of
    checkpoint folders (tiny://detr is RT-DETR v2)."""
    from transformers import DFineConfig

    labels = dict(enumerate(TINY_DETECTOR_CLASSES))
    channels = [32, 64, 96, 128]
    backbone = dict(model_type="hgnet_v2", embedding_size=16, depths=[1, 1, 1, 1], hidden_sizes=channels,
                    stem_channels=[3, 8, 16], stage_in_channels=[16, 32, 64, 96], stage_mid_channels=[8, 16, 32, 48],
                    stage_out_channels=channels, stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[2, 2, 2, 2],
                    out_features=["stage2", "stage3", "stage4"])
    return DFineConfig(
        backbone_config=backbone, encoder_in_channels=channels[1:], encoder_hidden_dim=32, encoder_ffn_dim=64,
        encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
        decoder_attention_heads=2, decoder_layers=2, num_queries=20, num_denoising=0,
        id2label=labels, label2id={v: k for k, v in labels.items()},
    )


# Grounding DINO's text side: BERT word pieces. The model finds the caption's delimiters by
# BERT's ids ([CLS] 101, [SEP] 102, "." 1012, "?" 1029), so the tiny vocabulary keeps them there.
TINY_GROUNDING_EDGES = (64, 128)
_BERT_SPECIAL_IDS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}
TINY_BERT_VOCAB_SIZE = 1030


def tiny_bert_tokenizer():
    """A BERT WordPiece tokenizer over single characters (every lower-case text tokenizes)."""
    import string

    from transformers import BertTokenizer

    chars = string.ascii_lowercase + string.digits + "-',/()"
    pieces = iter([*chars, *("##" + c for c in chars)])
    vocab = {}
    for index in range(TINY_BERT_VOCAB_SIZE):
        token = _BERT_SPECIAL_IDS.get(index) or (next(pieces, None) if index > 103 else None) or f"[unused{index}]"
        vocab[token] = index
    return BertTokenizer(vocab=vocab)


def tiny_grounding_dino_config():
    """Swin at 16 channels, a one-layer BERT, one encoder and two decoder layers (the box heads tie
    across decoder layers), 20 queries."""
    from transformers import GroundingDinoConfig

    return GroundingDinoConfig(
        backbone_config=dict(model_type="swin", image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                             num_heads=[1, 1, 2, 2], window_size=4, out_features=["stage2", "stage3", "stage4"]),
        text_config=dict(model_type="bert", vocab_size=TINY_BERT_VOCAB_SIZE, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=128),
        num_queries=20, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, d_model=32, num_feature_levels=3, max_text_len=64,
        encoder_n_points=2, decoder_n_points=2,
    )


# --- random://<family>: the published architectures at full size, random weights -------------
# For benchmarks and memory sizing without downloads. Text towers keep the in-code tokenizer's
# special-token ids so pooling finds the end-of-text token.

def _reference_text_ids() -> dict:
    return dict(bos_token_id=TINY_BOS_ID, eos_token_id=TINY_EOS_ID, pad_token_id=TINY_EOS_ID)


# Sam3Config's own text-tower defaults (a CLIP-L text encoder), restated because passing the
# special-token ids replaces them
_SAM3_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=512,
                  num_hidden_layers=24, num_attention_heads=16, max_position_embeddings=32, hidden_act="gelu")


def reference_config(name: str):
    """Config of the default published model of a family (sam-vit-base, sam2.1-hiera-tiny,
    clip-vit-base-patch32, siglip-base-patch16-224, dinov2-base, owlv2-base-patch16)."""
    import transformers as tf

    if name == "sam":
        return tf.SamConfig()
    if name == "sam2":
        return tf.Sam2Config()
    if name == "sam2_video":
        return tf.Sam2VideoConfig()
    if name == "sam3":
        return tf.Sam3Config(text_config=dict(_SAM3_TEXT, **_reference_text_ids()))
    if name == "sam3_tracker_video":  # facebook/sam3's tracker (1008 px input, ViT-L/14)
        return tf.Sam3TrackerVideoConfig()
    if name == "clip":
        return tf.CLIPConfig(text_config=_reference_text_ids())
    if name == "siglip":
        return tf.SiglipConfig(text_config=_reference_text_ids())
    if name == "dinov2":
        return tf.Dinov2Config()
    if name == "owlv2":
        return tf.Owlv2Config(text_config=_reference_text_ids(), vision_config=dict(image_size=960, patch_size=16))
    if name == "detr":  # rtdetr_v2_r50vd's architecture, COCO-sized head
        return tf.RTDetrV2Config(num_labels=80)
    if name == "grounding_dino":  # grounding-dino-tiny's architecture (Swin-T, BERT-base)
        return tf.GroundingDinoConfig()
    raise ValueError(f"no reference config for {name!r}")


_TINY = {
    "sam": tiny_sam_config,
    "sam2": tiny_sam2_config,
    "sam2_video": tiny_sam2_video_config,
    "sam3": tiny_sam3_config,
    "sam3_tracker_video": tiny_sam3_tracker_video_config,
    "clip": tiny_clip_config,
    "siglip": tiny_siglip_config,
    "dinov2": tiny_dinov2_config,
    "owlv2": tiny_owlv2_config,
    "detr": tiny_detr_config,
    "grounding_dino": tiny_grounding_dino_config,
}


def in_code_config(name: str, kind: str):
    """The config for an in-code model: kind "tiny" (small) or "random" (full size)."""
    return _TINY[name]() if kind == "tiny" else reference_config(name)
