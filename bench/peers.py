"""samflow's mask engine against the real peers, side by side, in one process.

    python bench/peers.py [--smoke | --quick] [--threads N] [--model NAME] [--grid N] [--size HxW] [--cases NAME ...]

One model for all three: Meta's SAM built from segment-anything's own registry with a seeded
random init, its state dict saved in Meta's layout and loaded by samflow's registry (the
checkpoint mapping under test), so the weights are identical:

  meta      segment_anything.SamAutomaticMaskGenerator on Meta's model (output_mode coco_rle,
            the same output as ours)
  hf        transformers' pipeline("mask-generation") on the mapped transformers SamModel
  samflow   samflow.models.amg.MaskGenerator on the same SamRunner

SAM 2 the same way (settings named sam2.1_hiera_*): Meta's SAM2AutomaticMaskGenerator from its
`sam2` package (its source release, built without the CUDA extension) on a model built from the
package's own config with a seeded init, saved as Meta's {"model": state dict} .pt and loaded by
samflow's registry as family sam2; ours on that runner. transformers' mask-generation pipeline
has no SAM 2, so there are two implementations there.

Cases: SAM's default thresholds (sam_defaults), none (no_thresholds), none with NMS off
(no_thresholds_nms_off: box NMS threshold 1.0, every mask kept: the post-processing stress case).
Per implementation: seconds per image, split into encoder / decoder / post-processing (the rest
of the wall time), masks kept; for samflow also how many of Meta's masks it matches one to one
at IoU >= 0.95 (candidates: masks of the same grid point), and its speedup over each peer.
Peers that are not installed are reported unavailable (value null with a note), not fatal.

Modes (grids and image sizes; ViT-B unless noted):
  --smoke  a small ViT (2 blocks, 256 px input) built with Meta's classes, 4x4 grid, one 96x128
           image: checks every path runs (seconds)
  --quick  ViT-B, 16x16 and 32x32 grids, 384x512 and 768x1024 images, one image each: the
           no-threshold case for all three, the NMS-off case for Meta's and ours (transformers'
           pipeline post-processes thousands of kept masks for tens of minutes per image there;
           the full run has it). About 50 minutes on 2 cores.
  (full)   the same grids and sizes, all three cases for all three
Every mode also runs SAM 2.1 Hiera-T (the same grids and sizes; in --smoke a 4x4 grid, 96x128).

Random weights give random IoU predictions, so the thresholded case keeps few masks; the
no-threshold cases are the ones that load the decoder and post-processing.
Prints figures; the last line is the JSON summary, also written to bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from amg import _summary, _timed, make_images
from common import emit, result

from samflow.models.amg import AmgParams, MaskGenerator
from samflow.models.loading.registry import load_model
from samflow.models.common.preprocess import IMAGENET_MEAN, IMAGENET_STD

SEED = 0
MATCH_IOU = 0.95
CASES = {
    "sam_defaults": dict(pred_iou_thresh=0.88, stability_score_thresh=0.95, box_nms_thresh=0.7),
    "no_thresholds": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.7),
    "no_thresholds_nms_off": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
}


@dataclasses.dataclass
class Setting:
    model: str  # "vit_b" | "small" (SAM) | "sam2.1_hiera_t" (SAM 2)
    grid: int
    hw: tuple[int, int]
    cases: tuple[str, ...]
    n_images: int = 1
    skipped: tuple[tuple[str, str], ...] = ()  # (case, implementation) pairs not run


def settings(mode: str) -> list[Setting]:
    sam2 = Setting("sam2.1_hiera_t", 16, (384, 512), ("no_thresholds", "no_thresholds_nms_off"))
    if mode == "smoke":
        return [Setting("small", 4, (96, 128), tuple(CASES)),
                dataclasses.replace(sam2, grid=4, hw=(96, 128), cases=("no_thresholds_nms_off",))]
    grids_and_sizes = [(g, hw) for hw in ((384, 512), (768, 1024)) for g in (16, 32)]
    sam2s = [dataclasses.replace(sam2, grid=g, hw=hw) for g, hw in grids_and_sizes]
    if mode == "quick":
        return [Setting("vit_b", g, hw, ("no_thresholds", "no_thresholds_nms_off"),
                        skipped=(("no_thresholds_nms_off", "hf"),)) for g, hw in grids_and_sizes] + sam2s
    return [Setting("vit_b", g, hw, tuple(CASES)) for g, hw in grids_and_sizes] + sam2s


def is_sam2(model: str) -> bool:
    return model.startswith("sam2")


# -- the shared model -----------------------------------------------------------------------------

def meta_model(name: str) -> torch.nn.Module:
    """Meta's Sam with a seeded init: the registry's ViT-B, or a 2-block ViT for --smoke; or
    Meta's SAM 2 built from its package's config of that name."""
    torch.manual_seed(SEED)
    if is_sam2(name):
        from sam2.build_sam import build_sam2

        return build_sam2(f"configs/sam2.1/{name}.yaml", ckpt_path=None, device="cpu").eval()
    if name != "small":
        from segment_anything import sam_model_registry

        return sam_model_registry[name](checkpoint=None).eval()
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    encoder = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, out_chans=256,
                              qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                              global_attn_indexes=(1,), window_size=4)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                          mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    prompts = PromptEncoder(embed_dim=256, image_embedding_size=(16, 16), input_image_size=(256, 256),
                            mask_in_chans=16)
    return Sam(encoder, prompts, decoder).eval()


def samflow_runner(sam: torch.nn.Module, workdir: Path, name: str):
    """Meta's state dict saved as Meta ships it, loaded through samflow's registry."""
    if is_sam2(name):
        path = workdir / f"{name}_seed{SEED}.pt"
        torch.save({"model": sam.state_dict()}, path)
        return load_model("sam2", str(path), device="cpu", dtype=torch.float32)
    path = workdir / f"sam_{name}_seed{SEED}.pth"
    torch.save(sam.state_dict(), path)
    return load_model("sam", str(path), device="cpu", dtype=torch.float32)


# -- the three implementations --------------------------------------------------------------------

def run_samflow(runner: Any, params: AmgParams, images: list[np.ndarray]) -> tuple[dict[str, float], list]:
    generator = MaskGenerator(runner, params)
    totals = {"encode_s": 0.0, "decode_s": 0.0, "postprocess_s": 0.0}
    records = []
    start = time.perf_counter()
    for image in images:
        records += generator.generate([image])
        for key in totals:
            totals[key] += generator.timings[key]
    elapsed = time.perf_counter() - start
    totals["postprocess_s"] = elapsed - totals["encode_s"] - totals["decode_s"]  # all the rest
    return _summary(elapsed, len(images), sum(len(r) for r in records), totals), records


def run_meta(sam: torch.nn.Module, params: AmgParams, images: list[np.ndarray]) -> tuple[dict[str, float], list]:
    from segment_anything import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **_meta_params(params))
    stages = [(sam.image_encoder, "forward", "encode_s"), (sam.prompt_encoder, "forward", "decode_s"),
              (sam.mask_decoder, "forward", "decode_s")]
    return _timed_generate(generator, stages, images)


def run_meta_sam2(sam2: torch.nn.Module, params: AmgParams, images: list[np.ndarray]) -> tuple[dict[str, float], list]:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(sam2, output_mode="coco_rle", **_meta_params(params))
    stages = [(sam2, "forward_image", "encode_s"), (sam2.sam_prompt_encoder, "forward", "decode_s"),
              (sam2.sam_mask_decoder, "forward", "decode_s")]
    return _timed_generate(generator, stages, images)


def _meta_params(params: AmgParams) -> dict[str, Any]:
    """Our parameters under the names both of Meta's generators take."""
    return dict(points_per_side=params.points_per_side, points_per_batch=params.points_per_batch,
                pred_iou_thresh=params.pred_iou_thresh, stability_score_thresh=params.stability_score_thresh,
                stability_score_offset=params.stability_score_offset, box_nms_thresh=params.box_nms_thresh)


def _timed_generate(generator: Any, stages: list[tuple[Any, str, str]],
                    images: list[np.ndarray]) -> tuple[dict[str, float], list]:
    """Runs one of Meta's generators over ``images``, its (module, method) ``stages`` timed into
    encode_s / decode_s for the run; post-processing is the rest of the wall time."""
    totals = {"encode_s": 0.0, "decode_s": 0.0}
    device = torch.device("cpu")
    for module, method, key in stages:
        setattr(module, method, _timed(getattr(module, method), totals, key, device))
    try:
        records = []
        start = time.perf_counter()
        with torch.inference_mode():
            for image in images:
                records.append(generator.generate(image))
        elapsed = time.perf_counter() - start
    finally:
        for module, method, _ in stages:
            delattr(module, method)
    totals["postprocess_s"] = elapsed - totals["encode_s"] - totals["decode_s"]
    return _summary(elapsed, len(images), sum(len(r) for r in records), totals), records


def run_hf(runner: Any, params: AmgParams, images: list[np.ndarray]) -> tuple[dict[str, float], list]:
    from PIL import Image
    from transformers import SamImageProcessor, pipeline

    size = runner.image_size
    processor = SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size},
                                  image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    model = runner.model
    pipe = pipeline("mask-generation", model=model, image_processor=processor, device=runner.device)
    totals = {"encode_s": 0.0, "decode_s": 0.0}
    model.get_image_embeddings = _timed(model.get_image_embeddings, totals, "encode_s", runner.device)
    model.forward = _timed(model.forward, totals, "decode_s", runner.device)
    kwargs = dict(points_per_batch=params.points_per_batch, points_per_crop=params.points_per_side,
                  pred_iou_thresh=params.pred_iou_thresh, stability_score_thresh=params.stability_score_thresh,
                  stability_score_offset=params.stability_score_offset, mask_threshold=params.mask_threshold,
                  crops_nms_thresh=params.box_nms_thresh, output_rle_mask=True)
    try:
        masks = 0
        start = time.perf_counter()
        for image in images:
            masks += len(pipe(Image.fromarray(image), **kwargs)["masks"])
        elapsed = time.perf_counter() - start
    finally:
        del model.get_image_embeddings, model.forward
    totals["postprocess_s"] = elapsed - totals["encode_s"] - totals["decode_s"]
    return _summary(elapsed, len(images), masks, totals), []


def missing(module: str) -> str | None:
    try:
        __import__(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc})"
    return None


# -- matching -------------------------------------------------------------------------------------

def matched(meta_records: list[list[dict]], ours: list[list[dict]]) -> tuple[int, int]:
    """(Meta's masks with a twin in ours at IoU >= MATCH_IOU, Meta's masks), one to one: within
    each grid point, pairs are taken greedily by IoU, each mask used once. Masks are compared by
    their RLE, not their boxes: Meta's end on the mask's last pixel, samflow's are COCO's (toBbox)."""
    from pycocotools import mask as mask_utils

    hits = total = 0
    for meta_image, our_image in zip(meta_records, ours):
        total += len(meta_image)
        for meta_group, our_group in _by_point(meta_image, our_image):
            a = [_rle(r["segmentation"]) for r in meta_group]
            b = [_rle(r["segmentation"]) for r in our_group]
            iou = np.asarray(mask_utils.iou(a, b, [0] * len(b))).reshape(len(a), len(b))
            hits += _greedy_pairs(iou)
    return hits, total


def _rle(segmentation: dict) -> dict:
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def _by_point(meta_image: list[dict], our_image: list[dict]):
    def key(record: dict) -> tuple[int, int]:
        x, y = record["point_coords"][0]
        return round(x * 100), round(y * 100)

    ours: dict[tuple[int, int], list[dict]] = {}
    for record in our_image:
        ours.setdefault(key(record), []).append(record)
    groups: dict[tuple[int, int], list[dict]] = {}
    for record in meta_image:
        groups.setdefault(key(record), []).append(record)
    return [(g, ours[k]) for k, g in groups.items() if k in ours]


def _greedy_pairs(iou: np.ndarray) -> int:
    pairs = 0
    iou = iou.copy()
    while iou.size and iou.max() >= MATCH_IOU:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        pairs += 1
        iou[i, :] = -1
        iou[:, j] = -1
    return pairs


# -- driver ---------------------------------------------------------------------------------------

def bench_setting(setting: Setting, workdir: Path) -> list[dict[str, Any]]:
    if is_sam2(setting.model) and missing("sam2"):  # the model itself comes from Meta's package
        print(f"== {setting.model}: unavailable: {missing('sam2')}")
        return [{"case": f"{setting.model}/{case}/{impl}", "metric": "s_per_image", "value": None, "unit": "s",
                 "note": f"unavailable: {missing('sam2')}"} for case in setting.cases for impl in ("samflow", "meta")]
    sam = meta_model(setting.model)
    runner = samflow_runner(sam, workdir, setting.model)
    images = make_images(setting.n_images, *setting.hw)
    label = f"{setting.model}/{setting.hw[0]}x{setting.hw[1]}/grid{setting.grid}"
    print(f"== {label}: {setting.n_images} image(s), {torch.get_num_threads()} threads")
    out: list[dict[str, Any]] = []
    unavailable = {"meta": missing("segment_anything"), "hf": missing("transformers.pipelines")}
    if is_sam2(setting.model):
        unavailable = {"meta": None, "hf": "transformers' mask-generation pipeline has no SAM 2"}
    for case in setting.cases:
        params = AmgParams(points_per_side=setting.grid, **CASES[case])
        impls: dict[str, Callable[[], tuple[dict[str, float], list]]] = {
            "samflow": lambda: run_samflow(runner, params, images),
            "meta": lambda: (run_meta_sam2 if is_sam2(setting.model) else run_meta)(sam, params, images),
            "hf": lambda: run_hf(runner, params, images),
        }
        figures, records = {}, {}
        for impl, fn in impls.items():
            name = f"{label}/{case}/{impl}"
            if (case, impl) in setting.skipped:
                print(f"  {case:22s} {impl:8s} not run in this mode")
                continue
            if unavailable.get(impl):
                out.append({"case": name, "metric": "s_per_image", "value": None, "unit": "s",
                            "note": f"unavailable: {unavailable[impl]}"})
                print(f"  {case:22s} {impl:8s} unavailable: {unavailable[impl]}")
                continue
            try:
                figures[impl], records[impl] = fn()
            except Exception as exc:  # a peer that breaks (API drift) must not hide the others
                if impl == "samflow":
                    raise
                note = f"failed: {type(exc).__name__}: {exc}"[:300]
                out.append({"case": name, "metric": "s_per_image", "value": None, "unit": "s", "note": note})
                print(f"  {case:22s} {impl:8s} {note}")
                continue
            out += _report(name, case, impl, figures[impl])
        out += _comparisons(f"{label}/{case}", figures, records)
    return out


def _report(name: str, case: str, impl: str, f: dict[str, float]) -> list[dict[str, Any]]:
    per_image = 1.0 / f["images_per_s"]
    print(f"  {case:22s} {impl:8s} {per_image:8.2f} s/image  encoder {f['encode_s_per_image']:.2f}"
          f"  decoder {f['decode_s_per_image']:.2f}  post {f['postprocess_s_per_image']:.2f}"
          f"  masks {f['masks_per_image']:.0f}")
    rows = [result(name, "s_per_image", per_image, "s")]
    for stage in ("encode", "decode", "postprocess"):
        rows.append(result(name, f"{stage}_s_per_image", f[f"{stage}_s_per_image"], "s"))
    rows.append(result(name, "masks_per_image", f["masks_per_image"], "masks"))
    return rows


def _comparisons(prefix: str, figures: dict[str, dict], records: dict[str, list]) -> list[dict[str, Any]]:
    rows = []
    ours = figures["samflow"]
    share = (ours["decode_s_per_image"] + ours["postprocess_s_per_image"]) * ours["images_per_s"]
    rows.append(result(f"{prefix}/samflow", "decoder_plus_post_share", share, "fraction"))
    for peer in ("meta", "hf"):
        if peer in figures:
            speedup = ours["images_per_s"] / figures[peer]["images_per_s"]
            rows.append(result(f"{prefix}/samflow_vs_{peer}", "speedup", speedup, "x"))
            print(f"  {'':22s} samflow vs {peer}: {speedup:.2f}x")
    if "meta" in records:
        hits, total = matched(records["meta"], records["samflow"])
        rows.append(result(f"{prefix}/samflow_vs_meta", "meta_masks_matched", hits, "masks"))
        rows.append(result(f"{prefix}/samflow_vs_meta", "meta_masks", total, "masks"))
        print(f"  {'':22s} Meta's masks matched (IoU >= {MATCH_IOU}): {hits} of {total}; "
              f"decoder + post = {share:.0%} of samflow's time")
    return rows


def _narrowed(chosen: list[Setting], args: argparse.Namespace) -> list[Setting]:
    """The mode's settings with --model / --grid / --size / --cases applied (one setting per grid
    and size)."""
    out: list[Setting] = []
    for setting in chosen:
        if args.model and setting.model != args.model:
            continue
        grid = args.grid or setting.grid
        hw = tuple(int(v) for v in args.size.lower().split("x")) if args.size else setting.hw
        cases = tuple(args.cases) if args.cases else setting.cases
        candidate = dataclasses.replace(setting, grid=grid, hw=hw, cases=cases)
        if candidate not in out:
            out.append(candidate)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="seconds: small ViT, 4x4 grid, one small image")
    mode.add_argument("--quick", action="store_true", help="ViT-B, 16/32 grids, 384x512 and 768x1024 (about 50 min)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--model", default=None, help="only this model's settings (vit_b, small, sam2.1_hiera_t)")
    parser.add_argument("--grid", type=int, default=None, help="only this points-per-side grid")
    parser.add_argument("--size", default=None, help="only this image size, HxW (e.g. 384x512)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None, help="only these cases")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = _narrowed(settings("smoke" if args.smoke else "quick" if args.quick else "full"), args)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for setting in chosen:
            results += bench_setting(setting, Path(workdir))
    emit("peers", results)


if __name__ == "__main__":
    main()
