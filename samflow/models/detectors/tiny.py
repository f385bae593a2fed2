"""In-code detector configs (OWLv2, RT-DETR v2, D-FINE, Grounding DINO) and Grounding DINO's
offline BERT tokenizer: tiny, and the published architectures at full size."""

from __future__ import annotations

from samflow.models.common.tiny_text import pick_config, reference_text_ids, tiny_text_config, tiny_vit_config

TINY_DETECTOR_CLASSES = ("cat", "dog", "bird")


def tiny_owlv2_config():
    from transformers import Owlv2Config

    # the class head compares projected text queries with image features mapped to the text
    # width, so projection_dim must equal the text hidden size (as in the real checkpoints)
    return Owlv2Config(text_config=tiny_text_config(), vision_config=tiny_vit_config(image_size=32, patch_size=4),
                       projection_dim=32)


def _labels() -> dict:
    labels = dict(enumerate(TINY_DETECTOR_CLASSES))
    return dict(id2label=labels, label2id={v: k for k, v in labels.items()})


def tiny_detr_config():
    """RT-DETR v2 at toy width: a 4-stage basic-block ResNet, one encoder and two decoder layers (the heads tie across layers)."""
    from transformers import RTDetrV2Config

    backbone = dict(model_type="rt_detr_resnet", embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                    depths=[1, 1, 1, 1], layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    return RTDetrV2Config(
        backbone_config=backbone, encoder_hidden_dim=32, encoder_in_channels=[32, 64, 128], encoder_ffn_dim=64,
        encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
        decoder_attention_heads=2, decoder_layers=2, num_queries=20, num_denoising=0, **_labels(),
    )


def tiny_dfine_config():
    """D-FINE at toy width (HGNetV2 backbone): the second real-time DETR architecture, for tests of
    checkpoint folders (tiny://detr is RT-DETR v2)."""
    from transformers import DFineConfig

    channels = [32, 64, 96, 128]
    backbone = dict(model_type="hgnet_v2", embedding_size=16, depths=[1, 1, 1, 1], hidden_sizes=channels,
                    stem_channels=[3, 8, 16], stage_in_channels=[16, 32, 64, 96], stage_mid_channels=[8, 16, 32, 48],
                    stage_out_channels=channels, stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[2, 2, 2, 2],
                    out_features=["stage2", "stage3", "stage4"])
    return DFineConfig(
        backbone_config=backbone, encoder_in_channels=channels[1:], encoder_hidden_dim=32, encoder_ffn_dim=64,
        encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
        decoder_attention_heads=2, decoder_layers=2, num_queries=20, num_denoising=0, **_labels(),
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


def _reference(name: str):
    def build():
        import transformers as tf

        if name == "owlv2":
            return tf.Owlv2Config(text_config=reference_text_ids(), vision_config=dict(image_size=960, patch_size=16))
        if name == "detr":  # rtdetr_v2_r50vd's architecture, COCO-sized head
            return tf.RTDetrV2Config(num_labels=80)
        return tf.GroundingDinoConfig()  # grounding-dino-tiny's architecture (Swin-T, BERT-base)

    return build


def in_code_config(name: str, kind: str):
    """name: "owlv2", "detr" or "grounding_dino"."""
    tiny = {"owlv2": tiny_owlv2_config, "detr": tiny_detr_config, "grounding_dino": tiny_grounding_dino_config}
    return pick_config(tiny, {n: _reference(n) for n in tiny}, name, kind)
