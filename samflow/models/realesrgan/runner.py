"""Real-ESRGAN upscaling with tiled inference.

    runner = load_model("realesrgan", "/models/RealESRGAN_x4plus.pth")   # or tiny:// / random://realesrgan
    big = runner.upscale(image, tile=256, overlap=32)   # HxWx3 uint8 -> (H*s)x(W*s)x3 uint8
    bigs = runner.upscale_batch(images, tile=256)       # many images, tiles batched together

URIs: a .pth / .safetensors checkpoint file, or a directory (or Hub repo) holding exactly one.
Official release files (`params_ema` / `params` wrappers) load strictly into our `RRDBNet` or
`SRVGGNetCompact` (see `esrgan_arch.py`); the architecture is recognised from the keys.

Tiling: the image is cut into `tile` x `tile` cores; each core is run with up to `overlap`
pixels of real context on every side (clamped at the image border, where the untiled model sees
zero padding too) and only the core's output is kept, so with enough overlap the result equals
untiled inference and there are no seams. Tiles of equal shape from all images are run as one
batch. fp16 on GPU (the registry's default), fp32 on CPU.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from samflow.models.realesrgan.arch import (
    ArchSpec,
    RRDBNet,
    infer_architecture,
    unwrap_release_checkpoint,
)
from samflow.models.loading.checkpoint import (
    UnsafeCheckpointError,
    read_state_dict,
    sha256_file,
    sha256_state_dict,
    weight_files,
)
from samflow.models.loading.hf import TINY_SEED, local_model_dir
from samflow.models.loading.registry import ModelLoadError, ModelSource

TINY_RRDB = dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=8, num_block=1, num_grow_ch=4)


@dataclass(frozen=True)
class _Tile:
    image: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 in input pixels
    window: tuple[int, int, int, int]  # core plus context, clamped to the image


class RealEsrganRunner:
    family = "realesrgan"

    def __init__(self, net: torch.nn.Module, arch: str, scale: int, uri: str, device: torch.device,
                 dtype: torch.dtype, checkpoint_sha256: str | None, tile_batch_size: int = 8):
        self.model = net
        self.arch = arch
        self.scale = scale
        self.uri = uri
        self.device = device
        self.dtype = dtype
        self.checkpoint_sha256 = checkpoint_sha256
        self.num_parameters = sum(p.numel() for p in net.parameters())
        self.tile_batch_size = tile_batch_size

    def upscale(self, image: np.ndarray, tile: int | None = None, overlap: int = 32) -> np.ndarray:
        return self.upscale_batch([image], tile=tile, overlap=overlap)[0]

    @torch.inference_mode()
    def upscale_batch(self, images: Sequence[np.ndarray], tile: int | None = None, overlap: int = 32) -> list[np.ndarray]:
        """Upscale each HxWx3 uint8 RGB image by `scale`. tile=None runs whole images."""
        tensors = [self._to_tensor(image) for image in images]
        outputs = [torch.empty((3, t.shape[1] * self.scale, t.shape[2] * self.scale), device=self.device,
                               dtype=torch.float32) for t in tensors]
        multiple = int(getattr(self.model, "size_multiple", 1))
        for tiles in _group_tiles(_plan_tiles(tensors, tile, overlap, multiple)).values():
            for start in range(0, len(tiles), self.tile_batch_size):
                self._run_tiles(tensors, outputs, tiles[start : start + self.tile_batch_size])
        return [_to_uint8(out) for out in outputs]

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        return torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1).float() / 255.0

    def _run_tiles(self, tensors: list[torch.Tensor], outputs: list[torch.Tensor], tiles: list[_Tile]) -> None:
        batch = torch.stack([tensors[t.image][:, t.window[0] : t.window[1], t.window[2] : t.window[3]] for t in tiles])
        result = self._forward(batch)
        s = self.scale
        for t, out in zip(tiles, result):
            y0, y1, x0, x1 = t.core
            wy, wx = t.window[0], t.window[2]
            outputs[t.image][:, y0 * s : y1 * s, x0 * s : x1 * s] = out[:, (y0 - wy) * s : (y1 - wy) * s,
                                                                         (x0 - wx) * s : (x1 - wx) * s]

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the generator; pad (reflect) to the size multiple pixel-unshuffle needs, crop back."""
        multiple = int(getattr(self.model, "size_multiple", 1))
        h, w = batch.shape[-2:]
        pad_h, pad_w = (-h) % multiple, (-w) % multiple
        if pad_h or pad_w:
            batch = F.pad(batch, (0, pad_w, 0, pad_h), mode="reflect")
        out = self.model(batch.to(self.dtype)).float()
        return out[..., : h * self.scale, : w * self.scale]


def _plan_tiles(tensors: Sequence[torch.Tensor], tile: int | None, overlap: int, multiple: int = 1) -> list[_Tile]:
    """Cores cover each image; windows add context. Window starts are aligned to `multiple` so a
    pixel-unshuffling model groups the same 2x2 / 4x4 pixel blocks as it does untiled."""
    tiles = []
    for index, t in enumerate(tensors):
        h, w = int(t.shape[1]), int(t.shape[2])
        if tile is None or (h <= tile and w <= tile):
            tiles.append(_Tile(index, (0, h, 0, w), (0, h, 0, w)))
            continue
        for y0 in _starts(h, tile):
            for x0 in _starts(w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                wy0 = max(y0 - overlap, 0) // multiple * multiple
                wx0 = max(x0 - overlap, 0) // multiple * multiple
                window = (wy0, min(y1 + overlap, h), wx0, min(x1 + overlap, w))
                tiles.append(_Tile(index, (y0, y1, x0, x1), window))
    return tiles


def _starts(length: int, tile: int) -> list[int]:
    """Tile starts covering [0, length); the last tile is shifted inward so all are full size."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile))
    return starts + [length - tile]


def _group_tiles(tiles: list[_Tile]) -> dict[tuple[int, int], list[_Tile]]:
    groups: dict[tuple[int, int], list[_Tile]] = defaultdict(list)
    for t in tiles:
        groups[(t.window[1] - t.window[0], t.window[3] - t.window[2])].append(t)
    return groups


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def load_generator_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return unwrap_release_checkpoint(read_state_dict(path))
    except UnsafeCheckpointError as exc:
        raise ModelLoadError(str(exc)) from None


def checkpoint_file(source: ModelSource) -> Path:
    path = local_model_dir(source)
    if path.is_file():
        return path
    files = weight_files(path)
    if len(files) != 1:
        raise ModelLoadError(f"{path} holds {len(files)} weight files; pass the path of one Real-ESRGAN checkpoint")
    return files[0]


def build_network(state_dict: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, ArchSpec]:
    spec = infer_architecture(state_dict)
    with torch.device("meta"):  # no wasted random init: the checkpoint supplies every tensor
        net = spec.build()
    net.load_state_dict(state_dict, strict=True, assign=True)
    return net, spec


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> RealEsrganRunner:
    if source.in_code:  # tiny: a 1-block RRDBNet; random: RealESRGAN_x4plus's architecture
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            net = RRDBNet(**TINY_RRDB) if source.kind == "tiny" else RRDBNet()
        sha, arch, scale = sha256_state_dict(net.state_dict()), "rrdbnet", 4
    else:
        path = checkpoint_file(source)
        try:
            net, spec = build_network(load_generator_state(path))
        except ValueError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
        sha, arch, scale = sha256_file(path), spec.name, spec.scale
    net = net.to(device=device, dtype=dtype).eval()
    return RealEsrganRunner(net, arch, scale, source.uri, device, dtype, sha)
