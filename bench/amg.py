"""Automatic mask generation throughput: samflow's engine vs transformers' mask-generation
pipeline, on the same SAM model (random weights: speed does not depend on them), grid and images.

    python bench/amg.py [--smoke | --quick] [--models tiny,vit-b,vit-h] [--images N] [--batch N]
                        [--crop-layers N] [--threads N]

CPU (default here): the tiny SAM architecture. GPU (when CUDA is there): SAM ViT-B and ViT-H
real architectures. For each model and case it reports images/s and, per image, seconds in the
image encoder, the prompt decoder and post-processing (filters, NMS, RLE) for:
  engine            MaskGenerator, a batch of images per call, crops and prompts batched
  engine_sam_calls  the same engine, called the way SAM's generator calls the model (one image
                    per call, one crop per encoder call, points_per_batch prompts per decoder
                    call): what batching alone buys
  hf_pipeline       transformers.pipeline("mask-generation"), one image per call; needs
                    torchvision (its NMS) -- reported as unavailable when it is missing. Its
                    encode / decode figures time the model's own calls; everything else
                    (pre-processing included) counts as its post-processing.
Random weights give random IoU predictions, so two threshold settings are timed: SAM's
published ones ("sam_defaults": few masks pass) and none ("keep_all": every mask goes through
post-processing, the engine's worst case).

Prints figures; the last line is the JSON summary, also written to bench/results/amg.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from common import emit, result

from samflow.models.amg import AmgParams, MaskGenerator
from samflow.models.loading.hf import build_in_code
from samflow.models.common.preprocess import IMAGENET_MEAN, IMAGENET_STD, Normalisation
from samflow.models.sam.runner import SamRunner

# SAM image encoders (Kirillov et al. 2023): width, depth, heads, global-attention blocks.
VIT = {
    "vit-b": (768, 12, 12, (2, 5, 8, 11)),
    "vit-l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit-h": (1280, 32, 16, (7, 15, 23, 31)),
}

PIPELINE_IMAGES = 4

THRESHOLDS = {
    "sam_defaults": dict(pred_iou_thresh=0.88, stability_score_thresh=0.95),
    "keep_all": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0),
}


def sam_config(name: str):
    from transformers import SamConfig

    if name == "tiny":
        from samflow.models.sam.tiny import tiny_sam_config

        return tiny_sam_config()
    width, depth, heads, global_attn = VIT[name]
    return SamConfig(vision_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                        global_attn_indexes=list(global_attn)))


def build_runner(name: str, device: torch.device, dtype: torch.dtype) -> SamRunner:
    """A SamRunner over the real architecture with random weights (same path as tiny://sam)."""
    from transformers import SamModel

    loaded = build_in_code(SamModel, sam_config(name), device, dtype)
    return SamRunner(loaded, f"random://sam-{name}", device, dtype, Normalisation(IMAGENET_MEAN, IMAGENET_STD))


def make_images(n: int, height: int, width: int) -> list[np.ndarray]:
    from samflow.scenes.sample import synthetic_scene  # PIL and scikit-image: not on a bare GPU machine

    rng = np.random.default_rng(0)
    return [synthetic_scene(rng, height, width, 6)[0] for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(runner: SamRunner, params: AmgParams, images: list[np.ndarray], batch: int) -> dict[str, float]:
    generator = MaskGenerator(runner, params)
    generator.generate(images[:batch])  # warm-up (allocator, kernels)
    totals = {"encode_s": 0.0, "decode_s": 0.0, "postprocess_s": 0.0}
    masks = 0
    sync(runner.device)
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        records = generator.generate(images[i : i + batch])
        masks += sum(len(r) for r in records)
        for key in totals:
            totals[key] += generator.timings[key]
    sync(runner.device)
    return _summary(time.perf_counter() - start, len(images), masks, totals)


def run_hf_pipeline(runner: SamRunner, params: AmgParams, images: list[np.ndarray]) -> dict[str, float]:
    """transformers' mask-generation pipeline on the runner's own SamModel, image by image."""
    from transformers import SamImageProcessor, pipeline

    size = runner.image_size
    processor = SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size},
                                  image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    model = runner.model
    pipe = pipeline("mask-generation", model=model, image_processor=processor, device=runner.device)
    totals = {"encode_s": 0.0, "decode_s": 0.0}
    # instance attributes shadow the methods for this run only (removed below)
    model.get_image_embeddings = _timed(model.get_image_embeddings, totals, "encode_s", runner.device)
    model.forward = _timed(model.forward, totals, "decode_s", runner.device)
    try:
        return _time_pipeline(pipe, params, images, totals, runner.device)
    finally:
        del model.get_image_embeddings, model.forward


def _time_pipeline(pipe: Any, params: AmgParams, images: list[np.ndarray], totals: dict[str, float],
                   device: torch.device) -> dict[str, float]:
    from PIL import Image

    kwargs = dict(points_per_batch=params.points_per_batch, points_per_crop=params.points_per_side,
                  pred_iou_thresh=params.pred_iou_thresh, stability_score_thresh=params.stability_score_thresh,
                  stability_score_offset=params.stability_score_offset, mask_threshold=params.mask_threshold,
                  crops_nms_thresh=params.box_nms_thresh, crops_n_layers=params.crop_n_layers,
                  crop_overlap_ratio=params.crop_overlap_ratio,
                  crop_n_points_downscale_factor=params.crop_n_points_downscale_factor, output_rle_mask=True)
    pil_images = [Image.fromarray(im) for im in images]
    pipe(pil_images[0], **kwargs)  # warm-up
    totals.update(encode_s=0.0, decode_s=0.0)
    masks = 0
    sync(device)
    start = time.perf_counter()
    for image in pil_images:
        masks += len(pipe(image, **kwargs)["masks"])
    sync(device)
    elapsed = time.perf_counter() - start
    totals["postprocess_s"] = elapsed - totals["encode_s"] - totals["decode_s"]
    return _summary(elapsed, len(images), masks, totals)


def _timed(fn: Callable[..., Any], totals: dict[str, float], key: str, device: torch.device) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sync(device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sync(device)
        totals[key] += time.perf_counter() - t0
        return out

    return wrapper


def _summary(elapsed: float, n_images: int, masks: int, totals: dict[str, float]) -> dict[str, float]:
    return {"images_per_s": n_images / elapsed, "masks_per_image": masks / n_images,
            **{f"{k}_per_image": v / n_images for k, v in totals.items()}}


def hf_pipeline_missing() -> str | None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return "torchvision is not installed (transformers' SAM post-processing needs its NMS)"
    return None


def bench_model(name: str, device: torch.device, dtype: torch.dtype, images: list[np.ndarray], batch: int,
                base: AmgParams, threshold_cases: Sequence[str]) -> list[dict[str, Any]]:
    runner = build_runner(name, device, dtype)
    h, w = images[0].shape[:2]
    print(f"== {name}: {runner.num_parameters / 1e6:.1f} M parameters, {len(images)} images {h}x{w}, "
          f"grid {base.points_per_side}^2, crop layers {base.crop_n_layers}, {device} {dtype}")
    out = []
    missing = hf_pipeline_missing()
    for case in threshold_cases:
        params = dataclasses.replace(base, **THRESHOLDS[case])
        sam_calls = dataclasses.replace(params, crops_per_encode=1, prompts_per_decode=params.points_per_batch)
        runs = {
            "engine": lambda: run_engine(runner, params, images, batch),
            "engine_sam_calls": lambda: run_engine(runner, sam_calls, images, 1),
        }
        if missing is None:
            # one image per call and host-side RLE: a few images give its rate
            runs["hf_pipeline"] = lambda: run_hf_pipeline(runner, params, images[:PIPELINE_IMAGES])
        figures = {}
        for impl, fn in runs.items():
            try:
                figures[impl] = f = fn()
            except Exception as exc:  # a baseline that breaks (API drift) must not hide the engine's figures
                if impl == "engine":
                    raise
                note = f"failed: {type(exc).__name__}: {exc}"[:300]
                print(f"  {case:13s} {impl:17s} {note}")
                out.append({"case": f"{name}/{case}/{impl}", "metric": "images_per_s", "value": None,
                            "unit": "images/s", "note": note})
                continue
            print(f"  {case:13s} {impl:17s} {f['images_per_s']:8.3f} images/s  encode {f['encode_s_per_image']:.4f}s"
                  f"  decode {f['decode_s_per_image']:.4f}s  post {f['postprocess_s_per_image']:.4f}s  "
                  f"masks/image {f['masks_per_image']:.1f}")
            label = f"{name}/{case}/{impl}"
            out.append(result(label, "images_per_s", f["images_per_s"], "images/s"))
            for stage in ("encode", "decode", "postprocess"):
                out.append(result(label, f"{stage}_per_image", f[f"{stage}_s_per_image"], "s"))
            out.append(result(label, "masks_per_image", f["masks_per_image"], "masks"))
        for other in ("engine_sam_calls", "hf_pipeline"):
            if other in figures:
                speedup = figures["engine"]["images_per_s"] / figures[other]["images_per_s"]
                out.append(result(f"{name}/{case}/engine_vs_{other}", "speedup", speedup, "x"))
        if missing:
            print(f"  {case:13s} hf_pipeline       unavailable: {missing}")
            out.append({"case": f"{name}/{case}/hf_pipeline", "metric": "images_per_s", "value": None,
                        "unit": "images/s", "note": missing})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run (< 2 minutes on a 2-core CPU)")
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny model, 2 small images, 8x8 grid")
    parser.add_argument("--models", default=None, help="comma list of tiny, vit-b, vit-l, vit-h")
    parser.add_argument("--images", type=int, default=None, help="images per case")
    parser.add_argument("--batch", type=int, default=None, help="images per engine call")
    parser.add_argument("--crop-layers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        models = (args.models or ("vit-b" if args.quick else "vit-b,vit-h")).split(",")
        n_images, batch, (h, w) = args.images or (4 if args.quick else 16), args.batch or 4, (1024, 1536)
        base = AmgParams(crop_n_layers=args.crop_layers)  # SAM's published grid: 32 x 32
    else:
        dtype = torch.float32
        models = (args.models or "tiny").split(",")
        n_images, batch, (h, w) = args.images or (4 if args.quick else 16), args.batch or 4, (144, 192)
        base = AmgParams(points_per_side=16 if args.quick else 32, crop_n_layers=args.crop_layers)
    if args.smoke:  # checks the bench still runs end to end (CI), not a measurement
        models, n_images, batch, (h, w) = ["tiny"], 2, 2, (64, 96)
        base = AmgParams(points_per_side=8, crop_n_layers=args.crop_layers)
    images = make_images(n_images, h, w)
    results = []
    for name in models:
        results += bench_model(name, device, dtype, images, batch, base, list(THRESHOLDS))
        if cuda:
            torch.cuda.empty_cache()
    emit("amg", results)


if __name__ == "__main__":
    main()
