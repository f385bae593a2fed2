"""In-code SAM 2 configs (image and video): tiny (Hiera at 64 px) and sam2.1-hiera-tiny's at full size."""

from __future__ import annotations

from samflow.models.common.tiny_text import pick_config


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


def _reference(name: str):
    def build():
        import transformers as tf

        return tf.Sam2Config() if name == "sam2" else tf.Sam2VideoConfig()

    return build


def in_code_config(name: str, kind: str):
    """name: "sam2" or "sam2_video"."""
    tiny = {"sam2": tiny_sam2_config, "sam2_video": tiny_sam2_video_config}
    return pick_config(tiny, {n: _reference(n) for n in tiny}, name, kind)
