"""Real-ESRGAN generator architectures in plain torch, with the official state-dict key names.

`RRDBNet` (RealESRGAN_x4plus, RealESRGAN_x2plus) and `SRVGGNetCompact` (realesr-general-x4v3)
follow the module layout of the published BasicSR / Real-ESRGAN generators, so the official release
checkpoints (`params_ema` or `params` inside the .pth) load with `strict=True`.

`infer_architecture(state_dict)` recognises which one a state dict holds and its hyper-parameters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and every earlier output (dense links)."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(self.lrelu(conv(torch.cat(features, 1))))
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, scaled residual."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator. scale 2 (and 1) fold pixels into channels first, then upsample x4."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {scale}")
        self.scale = scale
        self.unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (pixel unshuffle)."""
        return self.unshuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


class SRVGGNetCompact(nn.Module):
    """Compact VGG-style generator: conv/PReLU stack, pixel shuffle, plus a nearest-upsampled skip."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 32,
                 upscale: int = 4):
        super().__init__()
        self.scale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    size_multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


@dataclass(frozen=True)
class ArchSpec:
    """A recognised generator and its hyper-parameters (enough to rebuild it for a strict load)."""

    name: str  # "rrdbnet" | "srvgg"
    scale: int
    kwargs: dict

    def build(self) -> nn.Module:
        return RRDBNet(**self.kwargs) if self.name == "rrdbnet" else SRVGGNetCompact(**self.kwargs)


def unwrap_release_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Official .pth files wrap the weights: prefer `params_ema`, then `params`."""
    for key in ("params_ema", "params"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return dict(checkpoint[key])  # type: ignore[arg-type]
    return dict(checkpoint)  # type: ignore[arg-type]


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> ArchSpec:
    """Recognise RRDBNet / SRVGGNetCompact from key names and tensor shapes."""
    if "conv_first.weight" in state_dict and "conv_last.weight" in state_dict:
        return _rrdb_spec(state_dict)
    if "body.0.weight" in state_dict:
        return _srvgg_spec(state_dict)
    raise ValueError("not a Real-ESRGAN generator state dict (no conv_first / body.0 keys)")


def _rrdb_spec(sd: Mapping[str, torch.Tensor]) -> ArchSpec:
    num_feat, in_ch = sd["conv_first.weight"].shape[:2]
    out_ch = sd["conv_last.weight"].shape[0]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.rdb1\.", k))}
    num_grow_ch = sd["body.0.rdb1.conv1.weight"].shape[0]
    unshuffle_sq = in_ch // out_ch
    scale = {1: 4, 4: 2, 16: 1}[unshuffle_sq]
    kwargs = dict(num_in_ch=out_ch, num_out_ch=out_ch, scale=scale, num_feat=num_feat,
                  num_block=len(blocks), num_grow_ch=num_grow_ch)
    return ArchSpec("rrdbnet", scale, kwargs)


def _srvgg_spec(sd: Mapping[str, torch.Tensor]) -> ArchSpec:
    conv_indices = sorted(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.bias$", k)))
    num_feat, in_ch = sd["body.0.weight"].shape[:2]
    last = sd[f"body.{conv_indices[-1]}.weight"]
    upscale = math.isqrt(last.shape[0] // in_ch)
    kwargs = dict(num_in_ch=in_ch, num_out_ch=in_ch, num_feat=num_feat,
                  num_conv=len(conv_indices) - 2, upscale=upscale)
    return ArchSpec("srvgg", upscale, kwargs)
