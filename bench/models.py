"""Model throughput per family: images/s, and achieved TFLOP/s against a measured matmul peak.

    python bench/models.py [--smoke|--quick] [--device cpu|cuda] [--seconds S] [--only FAMILY ...]

Without CUDA it runs the tiny:// models through the registry (the same runner code as real
models) on the CPU in fp32; with tiny weights the figures mostly measure samflow's per-batch
overhead (pre-processing, batching, post-processing), not arithmetic.

With CUDA it runs random:// models: each family's default published architecture at full size
(sam-vit-base, sam2.1-hiera-tiny, clip-vit-base-patch32, siglip-base-patch16-224, dinov2-base,
owlv2-base-patch16 at 960 px, RealESRGAN_x4plus, torchvision's maskrcnn_resnet50_fpn_v2,
rtdetr_v2_r50vd, grounding-dino-tiny, a 4-level U-Net at 512 px) with random weights, at real input sizes, in the
registry's GPU dtype (bf16; Real-ESRGAN fp16). FLOPs of one batch are counted with torch's
FlopCounterMode, so "achieved TFLOP/s" / "matmul peak" is a model-FLOP utilisation figure.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from common import emit, result
from torch.utils.flop_counter import FlopCounterMode

from samflow.models.loading.registry import load_model


@dataclass
class Case:
    name: str
    family: str
    batch: int  # images per step
    unit: str  # what one step processes per image ("images", "prompts", ...)
    items_per_step: int
    make_step: Callable[[object, list[np.ndarray]], Callable[[], object]]
    image_hw: tuple[int, int]


def random_images(n: int, hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


def sam_decode_step(points_per_image: int):
    def make(runner, images):
        enc = runner.encode(images)
        h, w = images[0].shape[:2]
        rng = np.random.default_rng(1)
        points = torch.tensor(rng.uniform(0, 1, (len(images), points_per_image, 2)) * [w, h], dtype=torch.float32)
        indices = list(range(len(images)))
        return lambda: runner.decode(enc, indices, points=points)

    return make


def cases(gpu: bool) -> list[Case]:
    """Batch sizes and input sizes: realistic on GPU, small enough for a 2-core CPU otherwise."""
    big, small = (1024, 768), (96, 128)
    hw = big if gpu else small
    b = 8 if gpu else 4
    return [
        Case("sam.encode", "sam", b, "images", b, lambda r, ims: lambda: r.encode(ims), hw),
        Case("sam.decode 64 points/image", "sam", b, "prompts", b * 64, sam_decode_step(64), hw),
        Case("sam2.encode", "sam2", b, "images", b, lambda r, ims: lambda: r.encode(ims), hw),
        Case("sam2.decode 64 points/image", "sam2", b, "prompts", b * 64, sam_decode_step(64), hw),
        Case("clip.embed_images", "clip", 4 * b, "images", 4 * b, lambda r, ims: lambda: r.embed_images(ims), hw),
        Case("siglip.embed_images", "siglip", 4 * b, "images", 4 * b, lambda r, ims: lambda: r.embed_images(ims), hw),
        Case("dinov2.embed_images", "dinov2", 4 * b, "images", 4 * b, lambda r, ims: lambda: r.embed_images(ims), hw),
        Case("owlv2.propose", "owlv2", b, "images", b, lambda r, ims: lambda: r.propose(ims, max_boxes=100), hw),
        Case("realesrgan.upscale x4", "realesrgan", b, "images", b,
             lambda r, ims: lambda: r.upscale_batch(ims, tile=256 if gpu else None), (256, 256) if gpu else (48, 64)),
        # detector and segmenter families (propose / semantic stages)
        Case("maskrcnn.detect (with masks)", "maskrcnn", b, "images", b,
             lambda r, ims: lambda: r.detect(ims, threshold=0.05), hw),
        Case("detr.detect", "detr", b, "images", b, lambda r, ims: lambda: r.detect(ims, threshold=0.05), hw),
        Case("grounding_dino.detect 4 queries", "grounding_dino", b, "images", b,
             lambda r, ims: lambda: r.detect(ims, GROUNDING_QUERIES, threshold=0.05), hw),
        Case("unet.segment", "unet", b, "images", b, lambda r, ims: lambda: r.segment(ims), hw),
    ]


GROUNDING_QUERIES = ["a person", "a car", "a dog", "a traffic cone"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Callable[[], object], device: torch.device, seconds: float, min_steps: int) -> float:
    """Seconds per step: one warm-up step, then as many as fit in `seconds` (at least min_steps)."""
    step()
    synchronize(device)
    count, start = 0, time.perf_counter()
    while count < min_steps or time.perf_counter() - start < seconds:
        step()
        count += 1
    synchronize(device)
    return (time.perf_counter() - start) / count


def count_flops(step: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """Best of a few square matmuls: the practical dense-arithmetic ceiling of this device/dtype."""
    n = 8192 if device.type == "cuda" else (1024 if quick else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5 if device.type == "cuda" else 3):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def flop_unit(device: torch.device) -> tuple[str, float]:
    """TFLOP/s on GPUs; GFLOP/s on CPUs, where tiny models would round to zero TFLOP/s."""
    return ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)


def run_case(case: Case, device: torch.device, scheme: str, seconds: float, min_steps: int,
             peak: float) -> list[dict]:
    runner = load_model(case.family, f"{scheme}://{case.family}", device=device)
    images = random_images(case.batch, case.image_hw)
    step = case.make_step(runner, images)
    per_step = time_step(step, device, seconds, min_steps)
    unit, scale = flop_unit(device)
    achieved_flops = count_flops(step) / per_step
    achieved = achieved_flops / scale
    label = f"{case.name} ({scheme}, {str(runner.dtype).removeprefix('torch.')}, batch {case.batch}, " \
            f"{case.image_hw[1]}x{case.image_hw[0]})"
    rows = [
        result(label, "throughput", case.items_per_step / per_step, f"{case.unit}/s"),
        result(label, "batch_latency", per_step * 1000, "ms"),
        result(label, "achieved", achieved, unit),
        result(label, "fraction_of_matmul_peak", achieved_flops / peak, "ratio"),
    ]
    print(f"{label}: {case.items_per_step / per_step:.1f} {case.unit}/s, {achieved:.3f} {unit}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short timing windows (< 2 min on 2 CPU cores)")
    parser.add_argument("--smoke", action="store_true", help="one timed step per case (seconds; CI)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=None, help="timing window per case")
    parser.add_argument("--only", nargs="+", default=None, metavar="FAMILY", help="run only these families")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    quick = args.quick or args.smoke
    seconds = args.seconds if args.seconds is not None else (0.0 if args.smoke else 0.3 if args.quick else 3.0)
    torch.manual_seed(0)
    peak_dtype = torch.bfloat16 if gpu else torch.float32
    peak = matmul_peak_flops(device, peak_dtype, quick)
    unit, scale = flop_unit(device)
    results = [result(f"matmul peak ({str(peak_dtype).removeprefix('torch.')})", "peak", peak / scale, unit)]
    print(f"matmul peak: {peak / scale:.3f} {unit} ({peak_dtype})", flush=True)
    scheme = "random" if gpu else "tiny"
    min_steps = 1 if args.smoke else 2 if args.quick else 5
    for case in cases(gpu):
        if args.only and case.family not in args.only:
            continue
        results.extend(run_case(case, device, scheme, seconds, min_steps, peak))
    emit("models", results)


if __name__ == "__main__":
    main()
