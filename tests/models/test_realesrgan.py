"""Real-ESRGAN: official checkpoint layout loads strictly; tiling is seamless; sizes exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.realesrgan.arch import RRDBNet, SRVGGNetCompact
from samflow.models.loading.registry import load_model
from tests.helpers.synthetic import smooth_image


def official_rrdb_shapes(in_ch: int, num_block: int = 23, feat: int = 64, grow: int = 32) -> dict[str, tuple]:
    """Key names and shapes of RealESRGAN_x{4,2}plus.pth as published (BasicSR RRDBNet)."""
    shapes = {"conv_first.weight": (feat, in_ch, 3, 3), "conv_first.bias": (feat,)}
    for b in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 6):
                out = feat if c == 5 else grow
                shapes[f"body.{b}.rdb{r}.conv{c}.weight"] = (out, feat + (c - 1) * grow, 3, 3)
                shapes[f"body.{b}.rdb{r}.conv{c}.bias"] = (out,)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (feat, feat, 3, 3), (feat,)
    shapes["conv_last.weight"], shapes["conv_last.bias"] = (3, feat, 3, 3), (3,)
    return shapes


def official_srvgg_shapes(feat: int = 64, num_conv: int = 32, upscale: int = 4) -> dict[str, tuple]:
    """Key names and shapes of realesr-general-x4v3.pth (conv, PReLU, ..., conv; pixel shuffle)."""
    shapes = {"body.0.weight": (feat, 3, 3, 3), "body.0.bias": (feat,), "body.1.weight": (feat,)}
    for i in range(num_conv):
        shapes[f"body.{2 + 2 * i}.weight"], shapes[f"body.{2 + 2 * i}.bias"] = (feat, feat, 3, 3), (feat,)
        shapes[f"body.{3 + 2 * i}.weight"] = (feat,)
    last = 2 + 2 * num_conv
    shapes[f"body.{last}.weight"], shapes[f"body.{last}.bias"] = (3 * upscale**2, feat, 3, 3), (3 * upscale**2,)
    return shapes


def random_state(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """A distinct small constant per tensor (cheap for 16M parameters; a key mix-up shows)."""
    return {k: torch.full(s, 1e-4 * (i + 1)) for i, (k, s) in enumerate(shapes.items())}


@pytest.mark.parametrize(
    "release, wrapper, shapes, arch, scale",
    [
        ("RealESRGAN_x4plus.pth", "params_ema", official_rrdb_shapes(3), "rrdbnet", 4),
        ("RealESRGAN_x2plus.pth", "params_ema", official_rrdb_shapes(12), "rrdbnet", 2),
        ("realesr-general-x4v3.pth", "params", official_srvgg_shapes(), "srvgg", 4),
    ],
)
def test_official_release_layout_loads_strictly(tmp_path, release, wrapper, shapes, arch, scale):
    state = random_state(shapes)
    path = tmp_path / release
    torch.save({wrapper: state}, path)
    runner = load_model("realesrgan", str(path), device="cpu")
    assert runner.arch == arch and runner.scale == scale
    assert set(runner.model.state_dict()) == set(shapes)  # strict: same keys, nothing extra
    for key, tensor in runner.model.state_dict().items():
        assert torch.equal(tensor, state[key])
    assert runner.num_parameters == sum(t.numel() for t in state.values())
    if arch == "srvgg":  # full-size RRDB first-call warm-up costs seconds on CPU; tiny RRDB covers it
        out = runner.upscale(smooth_image(5, 7, 0))
        assert out.shape == (5 * scale, 7 * scale, 3) and out.dtype == np.uint8


def test_strict_load_rejects_foreign_keys(tmp_path):
    state = random_state(official_srvgg_shapes(feat=8, num_conv=2))
    state["extra.weight"] = torch.zeros(1)
    torch.save({"params": state}, tmp_path / "bad.pth")
    from samflow.models.loading.registry import ModelLoadError

    with pytest.raises(ModelLoadError, match="extra.weight"):
        load_model("realesrgan", str(tmp_path / "bad.pth"), device="cpu")


@pytest.fixture(scope="module")
def tiny_esrgan():
    return load_model("realesrgan", "tiny://realesrgan", device="cpu")


def test_x4_output_size_exact(tiny_esrgan):
    for h, w in [(7, 13), (32, 32), (45, 30)]:
        out = tiny_esrgan.upscale(smooth_image(h, w, 1))
        assert out.shape == (4 * h, 4 * w, 3)


def test_tiled_equals_untiled(tiny_esrgan):
    image = smooth_image(40, 60, 2)
    whole = tiny_esrgan.upscale(image, tile=None).astype(int)
    # the tiny generator's receptive field reaches ~19 input pixels, so 20 px of context suffice
    tiled = tiny_esrgan.upscale(image, tile=24, overlap=20).astype(int)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() <= 1  # rounding to uint8 only
    # without context the tile borders do show: the equality above is not trivial
    seamy = tiny_esrgan.upscale(image, tile=24, overlap=0).astype(int)
    assert np.abs(seamy - whole).max() > 1


def test_batch_equals_single_calls(tiny_esrgan):
    images = [smooth_image(20, 36, 3), smooth_image(33, 17, 4), smooth_image(20, 36, 5)]
    batch = tiny_esrgan.upscale_batch(images, tile=16, overlap=8)
    for image, out in zip(images, batch):
        assert np.array_equal(out, tiny_esrgan.upscale(image, tile=16, overlap=8))


def test_x2_odd_sizes_and_srvgg_tiling():
    torch.manual_seed(0)
    from samflow.models.realesrgan.runner import RealEsrganRunner

    for net, scale in [(RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4), 2),
                       (SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4), 4)]:
        runner = RealEsrganRunner(net.eval(), "x", scale, "test", torch.device("cpu"), torch.float32, None)
        image = smooth_image(31, 45, 6)
        whole = runner.upscale(image)
        assert whole.shape == (31 * scale, 45 * scale, 3)
        tiled = runner.upscale(image, tile=16, overlap=20)
        assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_random_uri_builds_the_x4plus_architecture():
    runner = load_model("realesrgan", "random://realesrgan", device="cpu")
    official = official_rrdb_shapes(3)
    assert set(runner.model.state_dict()) == set(official)
    assert runner.num_parameters == sum(int(np.prod(s)) for s in official.values())
