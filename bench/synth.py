"""samflow synth's per-image work: images/s of generation (SD + ControlNet) and of the fidelity
check (segment model + CLIP), peak memory, and the share of generation time in the U-Net.

    python bench/synth.py [--smoke|--quick]

On a CPU: the tiny:// pair (the same pipeline code as real models), with the stages' own
classes called in-process (no Ray): generation at 64 and 128 px with 2 and 4 steps. With CUDA:
random://controlnet (Stable Diffusion 1.5 + ControlNet 1.1 at full size, random weights) at
512x512, 20 steps, fp16. Figures with tiny weights mostly measure the pipeline's per-step
overhead, not arithmetic.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager

import numpy as np
import torch
from common import TreeMemory, emit, result

from samflow.config import load_config
from samflow.schemas import rle
from samflow.synth.fidelity import FidelityStage
from samflow.synth.generate import GenerateStage
from samflow.synth.pipeline import settings
from samflow.synth.plan import candidates
from samflow.synth.trusted import SourceImage


def sources(n: int, side: int) -> list[SourceImage]:
    rng = np.random.default_rng(0)
    images = []
    for index in range(n):
        masks = []
        for _ in range(3):
            mask = np.zeros((side, side), bool)
            y, x = rng.integers(0, side // 2, size=2)
            mask[y : y + side // 3, x : x + side // 3] = True
            masks.append({"segmentation": rle.encode(mask), "label": None, "source": "ground_truth", "source_id": None})
        images.append(SourceImage(f"item-{index}", f"mem://{index}.jpg", side, side, masks))
    return images


@contextmanager
def unet_timer(pipeline, cuda: bool):
    """Seconds spent in the U-Net's forward (synchronised on CUDA)."""
    spent = [0.0]
    forward = pipeline.unet.forward

    def timed(*args, **kwargs):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        spent[0] += time.perf_counter() - start
        return out

    pipeline.unet.forward = timed
    try:
        yield spent
    finally:
        pipeline.unet.forward = forward


def run_case(name: str, model: str, side: int, steps: int, images: int, cuda: bool) -> list[dict]:
    overrides = [f"synth.model={model}", f"synth.short_side={side}", f"synth.steps={steps}", "synth.min_fidelity=0"]
    cfg = load_config(overrides=overrides, profile="tiny" if not cuda else None)
    if cuda:  # fp16, as SD 1.5 is usually run; the fidelity check's models stay tiny (this case measures generation)
        cfg = load_config(overrides=[*overrides, "synth.dtype=float16", "stages.segment.model=tiny://sam",
                                     "stages.embed.model=tiny://clip"])
    table = candidates(sources(images, side), cfg)
    with TreeMemory(os.getpid()) as memory:
        generate = GenerateStage(cfg.synth.model, cfg.synth.controlnet, settings(cfg))
        generate(table.slice(0, 1))  # warm-up: first-call allocations and kernel selection
        with unet_timer(generate.runner.pipeline, cuda) as unet_s:
            start = time.perf_counter()
            generated = generate(table)
            generate_s = time.perf_counter() - start
        verify = FidelityStage(cfg.stages.segment.model, cfg.stages.embed.model, 0.0, None)
        verify(generated.slice(0, 1))
        start = time.perf_counter()
        verified = verify(generated)
        verify_s = time.perf_counter() - start
    assert not any(verified.column("error").to_pylist()), verified.column("error").to_pylist()
    case = f"{name} {side}px {steps} steps"
    print(f"{case}: generate {images / generate_s:.3f} images/s (U-Net {100 * unet_s[0] / generate_s:.0f}%), "
          f"verify {images / verify_s:.3f} images/s, peak {memory.peak_bytes / 2**20:.0f} MiB")
    return [
        result(case, "generate_images_per_s", images / generate_s, "images/s"),
        result(case, "unet_time_share", unet_s[0] / generate_s, "fraction"),
        result(case, "verify_images_per_s", images / verify_s, "images/s"),
        result(case, "peak_memory", memory.peak_bytes / 2**20, "MiB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="one tiny case, seconds")
    mode.add_argument("--quick", action="store_true", help="tiny cases within two minutes on 2 cores")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        cases = [("random://controlnet fp16", "random://controlnet", 512, 20 if not args.smoke else 2,
                  2 if args.smoke else 8)]
    elif args.smoke:
        cases = [("tiny://controlnet", "tiny://controlnet", 64, 2, 2)]
    else:
        cases = [("tiny://controlnet", "tiny://controlnet", 64, 2, 4), ("tiny://controlnet", "tiny://controlnet", 128, 4, 4)]
    results = []
    for name, model, side, steps, images in cases:
        results += run_case(name, model, side, steps, images, cuda)
    emit("synth", results)


if __name__ == "__main__":
    main()
