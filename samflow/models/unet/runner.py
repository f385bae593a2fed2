"""Semantic segmentation: a small torch U-Net, or any torchvision segmentation model, from a
checkpoint plus a small config naming the classes and the input size.

    runner = load_model("unet", "/models/roads")          # folder: config.json + one weight file
    label_maps, confidences = runner.segment(images)      # (H, W) int class ids, (H, W) float probs

A checkpoint folder holds `config.json`:
    {"model_type": "unet", "classes": ["background", "road", ...], "input_size": [512, 512],
     "architecture": "unet" | "<torchvision.models.segmentation builder>",
     "width": 32, "depth": 4, "in_channels": 3, "mean": [...], "std": [...]}   (the last five optional)
and one weight file (safetensors, or a state dict `torch.load(weights_only=True)` accepts).

Every image is resized to `input_size` (aspect ignored), scaled to [0, 1] and normalised with
`mean` / `std` (default 0 / 1); the logits are resized back to the original image bilinearly, and
the class of a pixel is their argmax, so label maps are in the original image's pixels and a batch
gives what single calls give.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samflow.models.loading.checkpoint import (
    UnsafeCheckpointError,
    read_state_dict,
    sha256_file,
    sha256_state_dict,
    weight_files,
)
from samflow.models.loading.registry import ModelLoadError, ModelSource
from samflow.models.common.preprocess import Normalisation, resize_square

TINY = dict(classes=["background", "road", "building"], input_size=[64, 64], width=8, depth=2)
RANDOM = dict(classes=["background", "foreground"], input_size=[512, 512], width=64, depth=4)
SEED = 0


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """The encoder-decoder of Ronneberger et al.: `depth` poolings, channels doubling from `width`,
    skip connections by concatenation, a 1x1 head. depth=0 is the head alone (a per-pixel linear
    classifier of the input channels)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        self.depth = depth
        channels = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(_block(cin, cout) for cin, cout in zip([in_channels, *channels], channels))
        self.up = nn.ModuleList(nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in range(depth))
        self.merge = nn.ModuleList(_block(2 * channels[i], channels[i]) for i in range(depth))
        self.head = nn.Conv2d(channels[0] if depth else in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depth == 0:
            return self.head(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.depth)):
            x = self.up[i](x)
            skip = skips.pop()
            x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))  # odd sizes
            x = self.merge[i](torch.cat([skip, x], dim=1))
        return self.head(x)


class SemanticRunner:
    family = "unet"

    def __init__(self, model: nn.Module, config: dict, uri: str, device: torch.device, dtype: torch.dtype,
                 checkpoint_sha256: str | None) -> None:
        self.model = model
        self.classes = [str(c) for c in config["classes"]]
        height, width = config.get("input_size") or (512, 512)
        self.input_size = (int(height), int(width))
        self.norm = Normalisation(tuple(config.get("mean", (0.0,) * 3)), tuple(config.get("std", (1.0,) * 3)))
        self.uri = uri
        self.device = device
        self.dtype = dtype
        self.checkpoint_sha256 = checkpoint_sha256
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @torch.inference_mode()
    def segment(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: (label map (H, W) int32 class ids, confidence (H, W) float32 softmax prob)."""
        if len(images) == 0:
            return []
        pixels = resize_square(images, self.input_size, self.norm, self.device, self.dtype)
        logits = self.model(pixels)
        logits = logits["out"] if isinstance(logits, dict) else logits  # torchvision models
        out = []
        for i, image in enumerate(images):
            resized = F.interpolate(logits[i : i + 1].float(), size=image.shape[:2], mode="bilinear", align_corners=False)
            confidence, labels = resized[0].softmax(dim=0).max(dim=0)
            out.append((labels.to(torch.int32).cpu().numpy(), confidence.cpu().numpy()))
        return out


def build_architecture(config: dict) -> nn.Module:
    classes = len(config["classes"])
    arch = config.get("architecture", "unet")
    if arch == "unet":
        return UNet(classes, int(config.get("in_channels", 3)), int(config.get("width", 32)), int(config.get("depth", 4)))
    from torchvision.models import segmentation

    builder = getattr(segmentation, arch, None)
    if builder is None or arch.startswith("_"):
        raise ModelLoadError(f"unknown segmentation architecture {arch!r}; use unet or a torchvision.models.segmentation builder")
    return builder(weights=None, weights_backbone=None, num_classes=classes, aux_loss=False)


def save_checkpoint(model: nn.Module, config: dict, folder: Path) -> Path:
    """Write a checkpoint folder (config.json + model.safetensors) that `build` loads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "unet", **config}))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def _from_folder(folder: Path) -> tuple[nn.Module, dict, str]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder} has no config.json naming the classes and input size")
    config = json.loads(config_file.read_text())
    if not config.get("classes"):
        raise ModelLoadError(f"{config_file}: 'classes' (the class names, in output-channel order) is required")
    files = weight_files(folder)
    if len(files) != 1:
        raise ModelLoadError(f"{folder} holds {len(files)} weight files; a segmentation checkpoint folder holds one")
    try:
        state = read_state_dict(files[0])
    except UnsafeCheckpointError as exc:
        raise ModelLoadError(str(exc)) from None
    model = build_architecture(config)
    model.load_state_dict(state, strict=True)
    return model, config, sha256_file(files[0])


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> SemanticRunner:
    if source.in_code:
        config = dict(TINY if source.kind == "tiny" else RANDOM)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = build_architecture(config)
        sha = sha256_state_dict(model.state_dict())
    else:
        path = Path(source.location)
        if not path.is_dir():
            raise ModelLoadError(f"{path} is not a segmentation checkpoint folder (config.json + weights)")
        model, config, sha = _from_folder(path)
    model = model.to(device=device, dtype=dtype).eval()
    return SemanticRunner(model, config, source.uri, device, dtype, sha)
