"""In-code SAM 3 configs (image model and video tracker): tiny, and facebook/sam3's at full size."""

from __future__ import annotations

from samflow.models.common.tiny_text import pick_config, reference_text_ids, tiny_text_config


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
        text_config=dict(tiny_text_config(), projection_dim=32),
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


# Sam3Config's own text-tower defaults (a CLIP-L text encoder), restated because passing the
# special-token ids replaces them
_SAM3_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=512,
                  num_hidden_layers=24, num_attention_heads=16, max_position_embeddings=32, hidden_act="gelu")


def reference_sam3_config():
    from transformers import Sam3Config

    return Sam3Config(text_config=dict(_SAM3_TEXT, **reference_text_ids()))


def _reference_tracker_config():
    """facebook/sam3's tracker (1008 px input, ViT-L/14)."""
    from transformers import Sam3TrackerVideoConfig

    return Sam3TrackerVideoConfig()


def in_code_config(name: str, kind: str):
    """name: "sam3" or "sam3_tracker_video"."""
    return pick_config({"sam3": tiny_sam3_config, "sam3_tracker_video": tiny_sam3_tracker_video_config},
                       {"sam3": reference_sam3_config, "sam3_tracker_video": _reference_tracker_config}, name, kind)
