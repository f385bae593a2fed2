"""Which parts of a SAM or SAM 2 model train: prompt encoder and mask decoder by default, the image
encoder frozen, fully trained, or through LoRA adapters (peft) on its attention projections.

`prepare(model, parts)` sets ``requires_grad`` (and adds the adapters); `merged(model)` folds
the adapters back into plain weights, so the saved model is an ordinary `SamModel`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

# The image encoder's attention projections (qkv and output) in every block: SAM's ViT layers,
# SAM 2's Hiera blocks.
LORA_TARGETS = r"vision_encoder\.(layers|backbone\.blocks)\.\d+\.attn\.(qkv|proj)"


@dataclass(frozen=True)
class Parts:
    image_encoder: Literal["frozen", "lora", "full"] = "frozen"
    prompt_encoder: bool = True
    mask_decoder: bool = True
    lora_rank: int = 8
    lora_alpha: float = 16.0


def prepare(model: nn.Module, parts: Parts) -> nn.Module:
    """``model`` with its trainable parts set (a peft-wrapped model for LoRA)."""
    if parts.image_encoder == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=parts.lora_rank, lora_alpha=parts.lora_alpha, target_modules=LORA_TARGETS,
                            lora_dropout=0.0, bias="none")
        model = get_peft_model(model, config)  # freezes everything but the adapters
    trains = {
        "vision_encoder": parts.image_encoder == "full",
        "prompt_encoder": parts.prompt_encoder,
        "mask_decoder": parts.mask_decoder,
    }
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            continue
        # SAM 2's no-memory embedding is added to the image features: it belongs to the encoder
        part = "vision_encoder" if "no_memory_embedding" in name else next((p for p in trains if f"{p}." in name), None)
        # the positional encoding shared by prompts and image tokens belongs to the prompt side
        parameter.requires_grad = trains[part] if part else parts.prompt_encoder
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("train: nothing to train (image_encoder frozen, prompt_encoder and mask_decoder off)")
    return model


def sam_of(model: nn.Module) -> nn.Module:
    """The SamModel inside (peft wraps it in a PeftModel and a LoraModel)."""
    return model.get_base_model() if _is_peft(model) else model


def merged(model: nn.Module) -> nn.Module:
    """A plain SamModel: LoRA adapters folded into the weights they adapt."""
    return model.merge_and_unload() if _is_peft(model) else model


def _is_peft(model: nn.Module) -> bool:
    # only `prepare` wraps a model in peft, after importing it: without the import, none is
    # wrapped (and a machine without peft can still train without LoRA)
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that change in training (what a checkpoint must keep), by parameter name."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
