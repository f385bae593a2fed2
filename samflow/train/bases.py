"""A small SAM that can learn on a CPU in minutes, written as a model directory.

``tiny://sam`` (64-px input, 8 x 8 tokens) is made for fast code-path tests; its prompt
positional encoding keeps transformers' initialisation (Gaussian frequencies with std
hidden_size / 2 = 16), so neighbouring points get unrelated codes and localisation must be
memorised. This config has a 128-px input (16 x 16 tokens of 48 channels, masks 64 x 64) and
unit-scale frequencies, as Meta's SAM has; its weights are random (seeded).

    write_small_sam(Path("bases/small-sam"))     # then: samflow train DST --base bases/small-sam
"""

from __future__ import annotations

from pathlib import Path

import torch


def small_sam_config(image_size: int = 128, hidden: int = 48):
    from transformers import SamConfig

    patch = 8
    return SamConfig(
        vision_config={"hidden_size": hidden, "output_channels": hidden, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": patch, "window_size": 8,
                       "global_attn_indexes": [1], "num_pos_feats": hidden // 2, "mlp_dim": 2 * hidden, "scale": 1.0},
        prompt_encoder_config={"hidden_size": hidden, "image_size": image_size, "patch_size": patch,
                               "mask_input_channels": 8},
        mask_decoder_config={"hidden_size": hidden, "mlp_dim": 2 * hidden, "num_attention_heads": 2,
                             "iou_head_hidden_dim": hidden},
    )


def write_small_sam(directory: Path, image_size: int = 128) -> Path:
    """A randomly initialised small SAM (seeded) in the transformers layout at ``directory``."""
    from transformers import SamModel

    from samflow.models.loading.hf import build_in_code

    # the same seeded build (torch's fan-in init) as tiny:// models
    loaded = build_in_code(SamModel, small_sam_config(image_size), torch.device("cpu"), torch.float32)
    loaded.model.save_pretrained(str(directory), safe_serialization=True)
    return directory
