"""The GPU bench: one command, on a machine with only torch, torchvision, transformers and pyarrow (no Ray, no
Prefect, no network, no model weights), within 8 minutes on an H200. From the repository root:

    PYTHONPATH=. python bench/gpu.py            # the GPU machine (CUDA, bf16)
    PYTHONPATH=. python bench/gpu.py --smoke    # every section on the CPU, tiny configs (CI)
    PYTHONPATH=. python bench/gpu.py --sections engine tracker     # only these (a rerun)

Sections, each guarded (a failure is recorded with its error and the next section runs) and each
with a time budget (SECTION_BUDGET_S; a section past it is stopped and recorded as failed), the
whole run within TOTAL_BUDGET_S (a later section gets what is left, or is skipped):

  peak      the measured bf16 matmul peak: large square matmuls timed with CUDA events
  encoders  image encoders of SAM ViT-H, SAM 2.1 Hiera-L and SAM 3, built from transformers
            configs at their published sizes with random weights: images/s, TFLOP per image
            (torch's FlopCounterMode, counted once) and achieved TFLOP/s against the peak
  engine    samflow's mask engine (MaskGenerator, SAM's 32x32 grid) with ViT-H and Hiera-L in
            bf16: images/s and seconds per image in encoder, decoder and post-processing, with
            SAM's thresholds and with none (every mask through post-processing)
  peers     only where Meta's segment_anything / sam2 import: Meta's generators and ours on the
            same random weights, in fp32, masks matched (bench/peers.py's functions); skipped
            with the reason otherwise
  concepts  SAM 3 concepts at 1, 8 and 32 prompts per image (bench/concepts.py)
  tracker   SAM 2 video tracker frames/s (Hiera-T, the default random://sam2, and Hiera-L)
  clip      CLIP ViT-B/32 image embeddings/s
  train     fine-tuning SAM ViT-B (random://sam): samflow's training step (SamTrainStep, SAM's
            recipe: 8 masks per image, 2 corrective rounds; AdamW; bf16 autocast) in images/s and
            masks/s, with the image encoder frozen and with LoRA (needs peft: carry its wheel)

--smoke runs every section on the CPU in fp32 with the tiny:// configs (Meta's SAM 2 comparison
is left out there: Meta's package has no small SAM 2). Prints figures; the last line is the JSON
summary, also written to bench/results/gpu.json, with each section's status, seconds and error,
and the ray / prefect modules the run imported (none expected).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from amg import THRESHOLDS, run_engine
from amg import build_runner as build_sam_runner
from common import emit, result
from concepts import images as noise_images
from concepts import timed_prompts
from models import count_flops, flop_unit, synchronize, time_step

from samflow.models import load_model
from samflow.models.amg import AmgParams

# Hard limit per section (seconds, on the GPU), model building included; the sections' own timing
# loops stop well before it. TOTAL_BUDGET_S caps the run: a section gets at most what is left.
SECTION_BUDGET_S = {"peak": 20, "encoders": 120, "engine": 90, "peers": 90, "concepts": 90, "tracker": 45,
                    "clip": 25, "train": 60}
TOTAL_BUDGET_S = 450
SMOKE_BUDGET_S = 240  # per section: a guard on a loaded 2-core CPU, where a section takes seconds
MIN_SECTION_S = 5
FORBIDDEN = {"ray", "prefect"}
GPU_COMMAND = "PYTHONPATH=. python bench/gpu.py"  # from the repository root, as the docstring says


class SectionTimeout(Exception):
    """A section ran past its budget."""


class Skipped(Exception):
    """A section that cannot run here (its reason is recorded)."""


@dataclass
class Bench:
    smoke: bool
    device: torch.device
    dtype: torch.dtype
    workdir: Path
    peak_flops: float | None = None
    runners: dict[str, Any] = field(default_factory=dict)

    def runner(self, name: str, build: Callable[[], Any]) -> Any:
        """One runner per architecture for the whole run (built on first use)."""
        if name not in self.runners:
            self.runners[name] = build()
        return self.runners[name]

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def window(self, section: Section, fraction: float) -> float:
        """Seconds a timing loop runs: none in --smoke (its minimum steps only)."""
        return 0.0 if self.smoke else section.share(fraction)

    def label(self, name: str) -> str:
        """The model's name; in --smoke, what stands in for it."""
        return f"tiny stand-in for {name}" if self.smoke else name


@dataclass
class Section:
    name: str
    budget_s: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def share(self, fraction: float) -> float:
        """Seconds a timing loop may take: ``fraction`` of the budget, less once time has been spent."""
        left = self.budget_s - (time.perf_counter() - self.start)
        return max(0.0, min(fraction * self.budget_s, 0.5 * left))


# -- 1. matmul peak --------------------------------------------------------------------------------

def matmul_seconds(n: int, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Seconds per (n x n) @ (n x n), after two warm-up products; CUDA events on a GPU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.matmul(a, b, out=out)
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b, out=out)
        return (time.perf_counter() - start) / repeats
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    begin.record()
    for _ in range(repeats):
        torch.matmul(a, b, out=out)
    end.record()
    torch.cuda.synchronize(device)
    return begin.elapsed_time(end) / 1000 / repeats


def section_peak(bench: Bench, section: Section) -> None:
    sizes, repeats = ((256, 512), 3) if bench.smoke else ((4096, 8192, 16384), 20)
    unit, scale = flop_unit(bench.device)
    best = 0.0
    for n in sizes:
        flops = 2 * n**3 / matmul_seconds(n, bench.device, bench.dtype, repeats)
        best = max(best, flops)
        print(f"  matmul {n}x{n} {dtype_name(bench.dtype)}: {flops / scale:.1f} {unit}")
        section.rows.append(result(f"matmul {n}x{n} ({dtype_name(bench.dtype)})", "achieved", flops / scale, unit))
    bench.peak_flops = best
    print(f"  peak: {best / scale:.1f} {unit}")
    section.rows.append(result(f"matmul peak ({dtype_name(bench.dtype)})", "peak", best / scale, unit))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- the models, built once ------------------------------------------------------------------------

def hiera_vision_config(variant: str) -> dict[str, Any]:
    """A SAM 2.1 Hiera trunk's vision config at its published size (the table the Meta
    checkpoint mapping reads), 1024 px input."""
    from samflow.models.loading.meta_checkpoints import _HIERA

    (width, blocks), (_, heads, global_blocks, windows) = next(
        (key, value) for key, value in _HIERA.items() if value[0] == variant)
    dims = [width * 2**i for i in range(len(blocks))]
    backbone = dict(model_type="sam2_hiera_det_model", hidden_size=width, num_attention_heads=heads[0],
                    image_size=[1024, 1024], blocks_per_stage=list(blocks), embed_dim_per_stage=dims,
                    num_attention_heads_per_stage=heads, window_size_per_stage=windows,
                    global_attention_blocks=global_blocks, window_positional_embedding_background_size=[7, 7])
    return dict(model_type="sam2_vision_model", backbone_config=backbone, backbone_channel_list=dims[::-1])


def sam_vit_h(bench: Bench) -> Any:
    return bench.runner("sam", lambda: build_sam_runner("tiny" if bench.smoke else "vit-h", bench.device, bench.dtype))


def sam2_hiera_l(bench: Bench) -> Any:
    def build() -> Any:
        if bench.smoke:
            return load_model("sam2", "tiny://sam2", device=bench.device, dtype=bench.dtype)
        from transformers import Sam2Config, Sam2Model

        from samflow.models.loading.hf import build_in_code
        from samflow.models.sam2.runner import Sam2Runner

        loaded = build_in_code(Sam2Model, Sam2Config(vision_config=hiera_vision_config("hiera_large")),
                               bench.device, bench.dtype)
        return Sam2Runner(loaded, "random://sam2.1-hiera-large", bench.device, bench.dtype)

    return bench.runner("sam2", build)


def sam3(bench: Bench) -> Any:
    def build() -> Any:
        runner = load_model("sam3", "tiny://sam3" if bench.smoke else "random://sam3", device=bench.device,
                            dtype=bench.dtype)
        if bench.cuda:
            runner.pairs_per_decode = 32
        return runner

    return bench.runner("sam3", build)


# -- 2. image encoders -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoder:
    label: str
    runner: Callable[[Bench], Any]
    forward: Callable[[Any, torch.Tensor], Any]  # (model, pixels) -> features


ENCODERS = [
    Encoder("SAM ViT-H", sam_vit_h, lambda model, pixels: model.get_image_embeddings(pixels)),
    Encoder("SAM 2.1 Hiera-L", sam2_hiera_l, lambda model, pixels: model.get_image_embeddings(pixels)),
    Encoder("SAM 3", sam3, lambda model, pixels: model.get_vision_features(pixel_values=pixels)),
]


def encoder_step(forward: Callable[[Any, torch.Tensor], Any], model: torch.nn.Module, pixels: torch.Tensor) -> None:
    with torch.inference_mode():
        forward(model, pixels)


def encoder_flops(model: torch.nn.Module, forward: Callable[..., Any], pixels: torch.Tensor) -> int:
    """FLOPs of one image through the encoder, counted with attention in torch's math backend
    (FlopCounterMode has no formula for some fused CPU attention kernels)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        return count_flops(lambda: forward(model, pixels[:1]))


def section_encoders(bench: Bench, section: Section) -> None:
    batch = 2 if bench.smoke else 8
    unit, scale = flop_unit(bench.device)
    for encoder in ENCODERS:
        runner = encoder.runner(bench)
        size = runner.image_size
        pixels = torch.randn(batch, 3, size, size, device=bench.device, dtype=bench.dtype)
        per_image = encoder_flops(runner.model, encoder.forward, pixels)
        step = partial(encoder_step, encoder.forward, runner.model, pixels)
        seconds = time_step(step, bench.device, bench.window(section, 0.05), min_steps=1 if bench.smoke else 3)
        achieved = per_image * batch / seconds
        label = (f"{bench.label(encoder.label)} encoder ({runner.num_parameters / 1e6:.0f} M parameters, "
                 f"{dtype_name(bench.dtype)}, batch {batch}, {size}x{size})")
        print(f"  {label}: {batch / seconds:.1f} images/s, {per_image / scale:.3f} {unit.split('/')[0]}/image, "
              f"{achieved / scale:.1f} {unit}{peak_share(bench, achieved)}")
        section.rows += [result(label, "throughput", batch / seconds, "images/s"),
                         result(label, "compute", per_image / scale, f"{unit.split('/')[0]}/image"),
                         result(label, "achieved", achieved / scale, unit)]
        if bench.peak_flops:
            section.rows.append(result(label, "fraction_of_matmul_peak", achieved / bench.peak_flops, "ratio"))


def peak_share(bench: Bench, flops: float) -> str:
    return f" ({flops / bench.peak_flops:.0%} of the matmul peak)" if bench.peak_flops else ""


# -- 3. the mask engine ----------------------------------------------------------------------------

def engine_setup(bench: Bench) -> tuple[list[np.ndarray], int, int]:
    """(images, images per call, points per side)."""
    if bench.smoke:
        return noise_images(2, (64, 96)), 2, 8
    return noise_images(8, (1024, 1536)), 4, 32


def section_engine(bench: Bench, section: Section) -> None:
    images, batch, grid = engine_setup(bench)
    h, w = images[0].shape[:2]
    for label, runner_of in (("SAM ViT-H", sam_vit_h), ("SAM 2.1 Hiera-L", sam2_hiera_l)):
        runner = runner_of(bench)
        for case, thresholds in THRESHOLDS.items():
            f = run_engine(runner, AmgParams(points_per_side=grid, **thresholds), images, batch)
            name = (f"engine {bench.label(label)} {case} ({dtype_name(bench.dtype)}, {len(images)} images {w}x{h}, "
                    f"grid {grid}^2, batch {batch})")
            print(f"  {name}: {f['images_per_s']:.2f} images/s, encode {f['encode_s_per_image']:.4f}s  decode "
                  f"{f['decode_s_per_image']:.4f}s  post {f['postprocess_s_per_image']:.4f}s per image, "
                  f"{f['masks_per_image']:.0f} masks/image")
            section.rows.append(result(name, "images_per_s", f["images_per_s"], "images/s"))
            for stage in ("encode", "decode", "postprocess"):
                section.rows.append(result(name, f"{stage}_per_image", f[f"{stage}_s_per_image"], "s"))
            section.rows.append(result(name, "masks_per_image", f["masks_per_image"], "masks"))


# -- 4. Meta's generators on the same weights ------------------------------------------------------

def section_peers(bench: Bench, section: Section) -> None:
    import peers

    reasons = {package: peers.missing(package) for package in ("segment_anything", "sam2")}
    if bench.smoke:
        reasons["sam2"] = "not in --smoke: Meta's sam2 package has no small SAM 2 config"
    if all(reasons[package] for package in ("segment_anything", "sam2")):
        raise Skipped("; ".join(f"{package}: {reason}" for package, reason in reasons.items()))
    images = noise_images(1, (96, 128) if bench.smoke else (768, 1024))
    params = AmgParams(points_per_side=4 if bench.smoke else 32, **peers.CASES["no_thresholds"])
    for package, model in (("segment_anything", "small" if bench.smoke else "vit_h"), ("sam2", "sam2.1_hiera_l")):
        if reasons[package]:
            print(f"  {model}: unavailable: {reasons[package]}")
            section.rows.append({"case": f"peers {model}", "metric": "s_per_image", "value": None, "unit": "s",
                                 "note": f"unavailable: {reasons[package]}"})
            continue
        try:
            compare_with_meta(bench, section, model, images, params)
        except (SectionTimeout, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - Meta's SAM failing must not hide Meta's SAM 2
            note = f"failed: {type(exc).__name__}: {exc}"[:300]
            print(f"  {model}: {note}")
            section.rows.append({"case": f"peers {model}", "metric": "s_per_image", "value": None, "unit": "s",
                                 "note": note})


def compare_with_meta(bench: Bench, section: Section, model: str, images: list[np.ndarray],
                      params: AmgParams) -> None:
    """Meta's generator and ours on one seeded model (fp32 both); on a GPU one untimed image each first."""
    import peers

    sam = peers.meta_model(model).to(bench.device)
    runner = meta_twin(sam, model, bench)
    meta_run = peers.run_meta_sam2 if peers.is_sam2(model) else peers.run_meta
    runs = {"samflow": lambda ims: peers.run_samflow(runner, params, ims),
            "meta": lambda ims: meta_run(sam, params, ims)}
    figures, records = {}, {}
    h, w = images[0].shape[:2]
    prefix = f"peers {model} fp32 {w}x{h} grid {params.points_per_side}^2"
    for impl, run in runs.items():
        if bench.cuda:
            run(images[:1])
        figures[impl], records[impl] = run(images)
        section.rows += peers._report(f"{prefix}/{impl}", "no_thresholds", impl, figures[impl])
    try:
        section.rows += peers._comparisons(prefix, figures, records)
    except ImportError as exc:  # the matching reads the masks with pycocotools
        section.rows.append({"case": f"{prefix}/samflow_vs_meta", "metric": "meta_masks_matched", "value": None,
                             "unit": "masks", "note": f"unavailable: {exc}"})


def meta_twin(sam: torch.nn.Module, model: str, bench: Bench) -> Any:
    """Meta's state dict as Meta ships it, loaded by samflow's registry on this device in fp32."""
    import peers

    family = "sam2" if peers.is_sam2(model) else "sam"
    path = bench.workdir / f"{model}.pt"
    torch.save({"model": sam.state_dict()} if family == "sam2" else sam.state_dict(), path)
    return load_model(family, str(path), device=bench.device, dtype=torch.float32)


# -- 5. SAM 3 concepts -----------------------------------------------------------------------------

def section_concepts(bench: Bench, section: Section) -> None:
    runner = sam3(bench)
    section.rows += timed_prompts(runner, bench.device, published=not bench.smoke, smoke=bench.smoke, quick=False)


# -- 6. the SAM 2 tracker --------------------------------------------------------------------------

def tracker_runners(bench: Bench) -> Iterator[tuple[str, Any]]:
    if bench.smoke:
        yield "SAM 2 tracker", load_model("sam2", "tiny://sam2", task="track", device=bench.device, dtype=bench.dtype)
        return
    yield "SAM 2.1 Hiera-T", load_model("sam2", "random://sam2", task="track", device=bench.device,
                                                         dtype=bench.dtype)
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from samflow.models.loading.hf import build_in_code
    from samflow.models.sam2.runner import Sam2VideoRunner, objects_always_present

    config = Sam2VideoConfig(vision_config=hiera_vision_config("hiera_large"))
    loaded = build_in_code(Sam2VideoModel, config, bench.device, bench.dtype, settle=objects_always_present)
    yield "SAM 2.1 Hiera-L", Sam2VideoRunner(loaded, "random://sam2.1-hiera-large", bench.device, bench.dtype)


def track_seconds(runner: Any, frames: list[np.ndarray], objects: int) -> float:
    """Seconds to seed ``objects`` masks on frame 0 and propagate them through every frame."""
    h, w = frames[0].shape[:2]
    masks = np.zeros((objects, h, w), dtype=bool)
    for k in range(objects):
        masks[k, k * h // (2 * objects) : (k + 1) * h // (2 * objects) + h // 4, w // 4 : 3 * w // 4] = True
    synchronize(runner.device)
    start = time.perf_counter()
    session = runner.start_session(frames)
    runner.add_masks(session, 0, list(range(1, objects + 1)), masks)
    tracked = sum(1 for _ in runner.propagate(session))
    synchronize(runner.device)
    if tracked != len(frames):
        raise RuntimeError(f"tracked {tracked} of {len(frames)} frames")
    return time.perf_counter() - start


def section_tracker(bench: Bench, section: Section) -> None:
    n, hw, objects = (4, (48, 64), 2) if bench.smoke else (32, (540, 960), 3)
    frames = noise_images(n, hw)
    for label, runner in tracker_runners(bench):
        track_seconds(runner, frames[:2], objects)  # warm-up
        seconds = track_seconds(runner, frames, objects)
        name = (f"tracker {bench.label(label)} ({dtype_name(bench.dtype)}, {n} frames {hw[1]}x{hw[0]}, "
                f"{objects} objects)")
        print(f"  {name}: {n / seconds:.1f} frames/s")
        section.rows.append(result(name, "tracked_frames_per_s", n / seconds, "frames/s"))
        del runner
        if bench.cuda:
            torch.cuda.empty_cache()


# -- 7. CLIP ---------------------------------------------------------------------------------------

def section_clip(bench: Bench, section: Section) -> None:
    runner = load_model("clip", "tiny://clip" if bench.smoke else "random://clip", device=bench.device,
                        dtype=bench.dtype)
    batch = 4 if bench.smoke else 256
    images = noise_images(batch, (96, 128) if bench.smoke else (480, 640))
    def step() -> None:
        runner.embed_images(images)

    seconds = time_step(step, bench.device, bench.window(section, 0.5), min_steps=1 if bench.smoke else 3)
    unit, scale = flop_unit(bench.device)
    achieved = count_flops(step) / seconds
    name = f"CLIP {runner.uri} embed_images ({dtype_name(bench.dtype)}, batch {batch}, " \
           f"{images[0].shape[1]}x{images[0].shape[0]} images)"
    print(f"  {name}: {batch / seconds:.1f} images/s, {achieved / scale:.1f} {unit}{peak_share(bench, achieved)}")
    section.rows += [result(name, "throughput", batch / seconds, "images/s"),
                     result(name, "achieved", achieved / scale, unit)]


# -- 8. fine-tuning --------------------------------------------------------------------------------

def section_train(bench: Bench, section: Section) -> None:
    from samflow.train.step import StepParams

    uri, batch = ("tiny://sam", 2) if bench.smoke else ("random://sam", 4)
    params = StepParams()  # the config's defaults: SAM's recipe
    for encoder in ("frozen", "lora"):
        if encoder == "lora":
            try:
                import peft  # noqa: F401
            except ImportError:
                section.rows.append({"case": "train lora", "metric": "skipped", "value": None, "unit": "",
                                     "note": "peft is not installed"})
                continue
        seconds = train_step_seconds(bench, section, uri, encoder, batch, params)
        name = (f"train {bench.label('SAM ViT-B')} encoder {encoder} ({dtype_name(bench.dtype)} autocast, "
                f"batch {batch}, {params.masks_per_image} masks x {1 + params.correction_rounds} rounds)")
        print(f"  {name}: {batch / seconds:.1f} images/s, {batch * params.masks_per_image / seconds:.1f} masks/s")
        section.rows += [result(name, "train_images_per_s", batch / seconds, "images/s"),
                         result(name, "train_masks_per_s", batch * params.masks_per_image / seconds, "masks/s")]
        if bench.cuda:
            torch.cuda.empty_cache()


def train_step_seconds(bench: Bench, section: Section, uri: str, encoder: str, batch: int, params: Any) -> float:
    """Seconds per training step (forward, backward, AdamW) of ``uri`` with its encoder ``encoder``."""
    from samflow.train.step import SamTrainStep
    from samflow.train.trainable import Parts, prepare, sam_of, trainable_parameters

    runner = load_model("sam", uri, device=bench.device, dtype=torch.float32)
    model = prepare(runner.model, Parts(encoder))
    model.train()
    train_step = SamTrainStep(sam_of(model), params)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-5)
    side, low_res = runner.image_size, runner.low_res_size
    pixels = torch.randn(batch, 3, side, side, device=bench.device)
    masks = [_boxes_of_masks(low_res, params.masks_per_image, bench.device, seed) for seed in range(batch)]
    generator = torch.Generator(device=bench.device).manual_seed(0)

    def step() -> None:
        with torch.autocast(bench.device.type, dtype=bench.dtype, enabled=bench.cuda):
            loss = train_step(pixels, masks, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return time_step(step, bench.device, bench.window(section, 0.2), min_steps=1 if bench.smoke else 3)


def _boxes_of_masks(side: int, count: int, device: torch.device, seed: int) -> torch.Tensor:
    """``count`` random rectangles as (count, side, side) bool masks: an image's ground truth."""
    rng = np.random.default_rng(seed)
    masks = torch.zeros(count, side, side, dtype=torch.bool)
    for mask in masks:
        y0, x0 = rng.integers(0, side // 2, size=2)
        h, w = rng.integers(2, side // 2, size=2)
        mask[y0 : y0 + h, x0 : x0 + w] = True
    return masks.to(device)


# -- the driver ------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Bench, Section], None]] = {
    "peak": section_peak, "encoders": section_encoders, "engine": section_engine, "peers": section_peers,
    "concepts": section_concepts, "tracker": section_tracker, "clip": section_clip, "train": section_train,
}


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """SectionTimeout in this (the main) thread once ``seconds`` have passed, and again every
    second after (a timeout caught and wrapped on the way, as load_model does, still ends it)."""
    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"past its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section(bench: Bench, name: str, budget_s: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The section's rows (those it made before failing, and a row naming its error) and its status."""
    print(f"== {name}", flush=True)
    section = Section(name, budget_s)
    status: dict[str, Any] = {"status": "ok", "budget_s": budget_s}
    try:
        with time_limit(budget_s):
            SECTIONS[name](bench, section)
    except Skipped as exc:
        status.update(status="skipped", reason=str(exc))
        section.rows.append({"case": name, "metric": "skipped", "value": None, "unit": "", "note": str(exc)})
    except Exception as exc:  # noqa: BLE001 - one section's failure must not hide the others'
        error = f"{type(exc).__name__}: {exc}"[:500]
        status.update(status="error", error=error, traceback=traceback.format_exc(limit=-4)[-2000:])
        section.rows.append({"case": name, "metric": "error", "value": None, "unit": "", "note": error})
    if bench.cuda:
        torch.cuda.empty_cache()
    status["seconds"] = round(time.perf_counter() - section.start, 2)
    print(f"   {name}: {status['status']} in {status['seconds']} s"
          + (f" ({status.get('error') or status.get('reason')})" if status["status"] != "ok" else ""), flush=True)
    return section.rows, status


def imported_forbidden() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)


def environment() -> dict[str, Any]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
            "cuda": torch.version.cuda, "command": " ".join(["python", *sys.argv])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every section on the CPU with tiny configs (CI)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    if not cuda and not args.smoke:
        print("no CUDA device: the published architectures on a CPU would take hours; use --smoke", file=sys.stderr)
        sys.exit(2)
    print(f"on the GPU machine, from the repository root: {GPU_COMMAND}")
    torch.manual_seed(0)
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    sections: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        bench = Bench(args.smoke, device, dtype, Path(workdir))
        for name in args.sections:
            left = TOTAL_BUDGET_S - (time.perf_counter() - start)
            if not args.smoke and left < MIN_SECTION_S:
                sections[name] = {"status": "skipped", "reason": f"the {TOTAL_BUDGET_S} s total is spent"}
                results.append({"case": name, "metric": "skipped", "value": None, "unit": "",
                                "note": sections[name]["reason"]})
                continue
            budget = SMOKE_BUDGET_S if args.smoke else min(SECTION_BUDGET_S[name], left)
            rows, sections[name] = run_section(bench, name, budget)
            results += rows
    total = time.perf_counter() - start
    print(f"total {total:.1f} s; ray / prefect modules imported: {imported_forbidden() or 'none'}")
    emit("gpu", results, extra={"mode": "smoke" if args.smoke else "gpu", "total_s": round(total, 2),
                                "sections": sections, "forbidden_modules_imported": imported_forbidden(),
                                "environment": environment()})


if __name__ == "__main__":
    main()
