"""SAM 3 concept segmentation: images/s for 1, 8 and 32 prompts per image.

    python bench/concepts.py [--smoke | --quick] [--device cpu|cuda]

The runner encodes each image once and expands its features to every prompt, so the cost per
image grows with prompts only by the prompt-conditioned heads (DETR encoder / decoder, mask
decoder). Target: the 32-prompt cost per image is at most 2x the 1-prompt cost. For contrast,
"one prompt per call" re-encodes the image for every prompt (transformers' one-image-one-text
pairing, what a loop over `Sam3Processor(images=..., text=p)` does).

Without CUDA it runs tiny://sam3 on the CPU in fp32 (the same runner code; tiny weights make
the heads, not the encoder, most of the cost, so the ratio is a pessimistic bound). With CUDA it
runs random://sam3, the published architecture (ViT 1008 px, 840 M parameters) in bf16.
Also reported: the encoder's and the heads' share (encode_images alone vs the rest).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, result  # noqa: E402
from samflow.models.registry import load_model  # noqa: E402

PROMPTS = [f"concept {k}" for k in range(32)]


def images(n: int, hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


def timed(step, repeats: int, device: torch.device) -> float:
    """Median seconds of ``step`` over ``repeats`` runs after one warm-up."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="seconds: 1 and 8 prompts, one repeat")
    parser.add_argument("--quick", action="store_true", help="under two minutes on a 2-core CPU")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    uri = "random://sam3" if device.type == "cuda" else "tiny://sam3"
    runner = load_model("sam3", uri, device=device)
    if device.type == "cuda":
        runner.pairs_per_decode = 32
    batch, hw = (4, (720, 960)) if device.type == "cuda" else (2 if args.smoke else 4, (96, 128))
    counts = (1, 8) if args.smoke else (1, 8, 32)
    repeats = 1 if args.smoke else (2 if args.quick else 5)
    batch_images = images(batch, hw)
    runner.encode_texts(PROMPTS)  # the vocabulary is encoded once per actor, not per batch
    print(f"{uri} on {device} ({runner.dtype}), {batch} images of {hw[1]}x{hw[0]} per call")

    results = []
    per_image: dict[int, float] = {}
    for n in counts:
        seconds = timed(lambda: runner.segment(batch_images, PROMPTS[:n], score_thresh=0.5), repeats, device)
        per_image[n] = seconds / batch
        print(f"{n:3d} prompts/image: {batch / seconds:8.2f} images/s  {1000 * per_image[n]:8.1f} ms/image")
        results.append(result(f"{n} prompts per image", "throughput", batch / seconds, "images/s"))
        results.append(result(f"{n} prompts per image", "latency", 1000 * per_image[n], "ms/image"))
    top = max(counts)
    ratio = per_image[top] / per_image[1]
    print(f"cost per image, {top} prompts vs 1: {ratio:.2f}x (target <= 2x)")
    results.append(result(f"{top} vs 1 prompts", "cost ratio", ratio, "x"))

    encode_s = timed(lambda: runner.encode_images(batch_images), repeats, device) / batch
    heads_s = (per_image[top] - encode_s) / top
    print(f"encoder {1000 * encode_s:.1f} ms/image; heads {1000 * heads_s:.1f} ms per (image, prompt)")
    results.append(result("encoder", "latency", 1000 * encode_s, "ms/image"))
    results.append(result("heads", "latency", 1000 * heads_s, "ms/pair"))

    naive_n = 8
    naive = timed(lambda: [runner.segment(batch_images, [p], score_thresh=0.5) for p in PROMPTS[:naive_n]],
                  1, device)
    print(f"{naive_n} prompts, one prompt per call (re-encoding): {batch / naive:.2f} images/s; "
          f"shared features: {per_image[1] and 1 / per_image[naive_n]:.2f} images/s")
    results.append(result(f"{naive_n} prompts, one prompt per call", "throughput", batch / naive, "images/s"))
    emit("concepts", results)


if __name__ == "__main__":
    main()
