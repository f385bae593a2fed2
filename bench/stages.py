"""Per-stage cost of the model stages, called in-process on decode-shaped batches (no Ray).

    python bench/stages.py [--quick] [--images N] [--side PX] [--config run.yaml]

Tiny models (the tiny profile, default) on CPU measure the stages' own overhead around the model
(batch plumbing, JSON, RLE, crops); with --config naming real models (and a local Real-ESRGAN
checkpoint) on a GPU host the figures are the stages' throughput. Also times mapping masks back from an upscaled image (pure numpy, real
sizes), the part of the upscale path that does not shrink with a tiny model.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from common import emit, result

from samflow.actors.batch import object_column
from samflow.actors.embed import EmbedConfig, EmbedStage
from samflow.actors.propose import ProposeConfig, ProposeStage
from samflow.actors.rescale import records_to_original
from samflow.actors.segment import SegmentConfig, SegmentStage
from samflow.actors.stage import StageContext
from samflow.actors.upscale import UpscaleConfig, UpscaleStage
from samflow.config import RunConfig, load_config
from samflow.scenes.sample import synthetic_scene
from samflow.schemas import masks as mask_column
from samflow.schemas import rle

VOCABULARY = [f"object {i}" for i in range(20)]
Batch = dict[str, np.ndarray]


def make_batch(n: int, side: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    images = [synthetic_scene(rng, side, side, n_shapes=4)[0] for _ in range(n)]
    return {
        "uri": object_column([f"mem://{i}" for i in range(n)]),
        "item_id": object_column([f"item{i}" for i in range(n)]),
        "frame_index": np.zeros(n, dtype=np.int32),
        "timestamp_s": np.full(n, np.nan),
        "width": np.full(n, side, dtype=np.int32),
        "height": np.full(n, side, dtype=np.int32),
        "pixels": object_column([im.tobytes() for im in images]),
        "error_stage": object_column([""] * n),
        "error_type": object_column([""] * n),
        "error_message": object_column([""] * n),
    }


def copy(batch: Batch) -> Batch:
    return {k: v.copy() for k, v in batch.items()}


def images_per_s(
    stage: Callable[[Batch], Batch], batch: Batch, batch_size: int, repeats: int = 1
) -> tuple[float, Batch]:
    """Run ``stage`` over ``batch`` in slices of ``batch_size``, ``repeats`` times; return the
    best images/s (the machine may be shared) and the output."""
    n = len(batch["uri"])
    stage(_rows(batch, 0, 1))  # warm-up (lazy init, caches)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        parts = [stage(_rows(batch, i, i + batch_size)) for i in range(0, n, batch_size)]
        best = min(best, time.perf_counter() - start)
    merged = {k: _concat([p[k] for p in parts]) for k in parts[0]}
    return n / best, merged


def _rows(batch: Batch, start: int, end: int) -> Batch:
    """Rows start..end as a stage's own batch (numpy columns copied; Arrow ones are immutable)."""
    return {k: v[start:end].copy() if isinstance(v, np.ndarray) else v[start:end] for k, v in batch.items()}


def _concat(parts: list) -> object:
    return pa.concat_arrays(parts) if isinstance(parts[0], pa.Array) else np.concatenate(parts)


def rescale_ms_per_mask(side: int, factor: int, masks: int) -> float:
    rng = np.random.default_rng(1)
    big = side * factor
    records = []
    for _ in range(masks):
        y0, x0 = rng.integers(0, big // 2, size=2)
        mask = np.zeros((big, big), dtype=bool)
        mask[y0 : y0 + big // 3, x0 : x0 + big // 4] = True
        records.append({"segmentation": rle.encode(mask), "bbox": [0, 0, 1, 1], "point_coords": [[1.0, 1.0]],
                        "crop_box": [0, 0, big, big]})
    start = time.perf_counter()
    records_to_original(records, factor)
    return (time.perf_counter() - start) / masks * 1000


def run(cfg: RunConfig, n: int, side: int, repeats: int) -> list[dict]:
    st = cfg.stages
    batch = make_batch(n, side)
    out: list[dict] = []

    def record(case: str, rate: float) -> None:
        out.append(result(case, "throughput", rate, "images/s"))
        print(f"{case:<36} {rate:8.2f} images/s", flush=True)

    upscale = UpscaleStage(UpscaleConfig(model=st.upscale.model, min_short_side=side + 1, tile=st.upscale.tile))
    rate, upscaled = images_per_s(upscale, batch, st.upscale.batch_size, repeats)
    record(f"upscale x{upscale.scale} ({side}px)", rate)

    propose = ProposeStage(ProposeConfig(model=st.propose.model, max_boxes=8, score_thresh=0.0))
    rate, proposed = images_per_s(propose, batch, st.propose.batch_size, repeats)
    record("propose (8 boxes)", rate)

    segment = SegmentStage(SegmentConfig(model=st.segment.model), StageContext(run=cfg))
    rate, segmented = images_per_s(segment, batch, st.segment.batch_size, repeats)
    record("segment (grid)", rate)
    rate, _ = images_per_s(segment, proposed, st.segment.batch_size, repeats)
    record("segment (8 box prompts + grid)", rate)
    rate, _ = images_per_s(segment, propose(upscaled), st.segment.batch_size, repeats)
    record(f"segment (upscaled x{upscale.scale}, boxes)", rate)

    masks = int(mask_column.counts(segmented[mask_column.COLUMN]).sum())
    labelled = StageContext(run=cfg.model_copy(update={"labels": cfg.labels.model_copy(update={"vocabulary": VOCABULARY})}))
    for case, (context, mask_embeddings) in {
        "embed (image only)": (None, False),
        "embed + labels (20 words)": (labelled, False),
        "embed + labels + mask vectors": (labelled, True),
    }.items():
        embed = EmbedStage(EmbedConfig(model=st.embed.model, mask_embeddings=mask_embeddings), context)
        rate, _ = images_per_s(embed, segmented, st.embed.batch_size, repeats)
        record(f"{case} ({masks / n:.0f} masks/img)", rate)

    ms = rescale_ms_per_mask(256, 4, 32)
    out.append(result("masks back from x4 of 256px", "time_per_mask", ms, "ms"))
    print(f"{'masks back from x4 of 256px':<36} {ms:8.2f} ms/mask")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 images of 64 px (< 2 min on 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="2 images of 32 px (seconds)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--config", help="run config YAML with real models (default: the tiny profile)")
    args = parser.parse_args()
    cfg = load_config(args.config, profile=None if args.config else "tiny")
    n, side = (2, 32) if args.smoke else (8, 64) if args.quick else (args.images, args.side)
    emit("stages", run(cfg, n, side, repeats=1 if args.quick or args.smoke else 2))


if __name__ == "__main__":
    main()
