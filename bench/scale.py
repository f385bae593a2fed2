"""Scale-out: throughput with 1, 2 and 4 actors per model stage on a local Ray cluster.

    python bench/scale.py [--quick] [--images N] [--actors 1 2 4]

Runs the real pipeline (run_pipeline: decode -> segment -> embed -> staged shards -> commits)
on tiny models over synthetic images, once per pool size, in one local Ray instance. Reports per
pool size: images/s over the pipeline, scaling efficiency (throughput / (actors x throughput with
one actor)), and per model stage its busy time (the stage's own ``_meta`` busy seconds), its idle
time (actors x the operator's span in Ray Data's stats, minus busy), and Ray's summed task wall
time. With a GPU, mean GPU utilisation during each run (nvidia-smi; whole device, all pools).

On a 2-core CPU the actors share two cores, so efficiency well below 1 is the expected figure
there: the bench measures how the graph scales, the machine decides how far.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import emit, result

from samflow.config import RunConfig, load_config
from samflow.pipeline.graph import PipelineStats, run_pipeline
from samflow.scenes.sample import write_sample_dataset
from samflow.store.storage import list_files

MODEL_STAGES = ("segment", "embed")


class GpuUtilisation:
    """Mean utilisation of the first GPU while the block runs (None without nvidia-smi)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def __enter__(self) -> "GpuUtilisation":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.wait(self.interval_s):
            out = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
            if out:
                self.samples.append(float(out.splitlines()[0]))

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def config_for(actors: int, gpus_per_actor: float) -> RunConfig:
    overrides = ["output.shard_rows=8", "stages.segment.batch_size=1", "stages.embed.batch_size=4"]
    for stage in MODEL_STAGES:
        overrides += [f"stages.{stage}.concurrency=[{actors}, {actors}]",
                      f"stages.{stage}.num_gpus={gpus_per_actor}"]
    return load_config(profile="tiny", overrides=overrides)


def stage_figures(stats: PipelineStats, actors: int) -> dict[str, dict[str, float]]:
    """Busy, idle and Ray task time per model stage."""
    figures = {}
    for stage in MODEL_STAGES:
        ray_op = next((v for k, v in stats.operators.items() if stage.capitalize() in k), {})
        busy = stats.stage_busy_s.get(stage, 0.0)
        span = ray_op.get("span_s", 0.0)
        figures[stage] = {
            "busy_s": busy,
            "idle_s": max(actors * span - busy, 0.0),
            "ray_task_wall_s": ray_op.get("task_wall_s", 0.0),
            "actors_used": len(stats.workers.get(stage, ())),
        }
    return figures


def run_case(items: list[dict], actors: int, gpus_per_actor: float, workdir: Path) -> dict:
    cfg = config_for(actors, gpus_per_actor)
    dst = workdir / f"out-{actors}"
    with GpuUtilisation() as gpu:
        start = time.perf_counter()
        stats = run_pipeline(items, cfg, str(dst), f"scale-{actors}")
        seconds = time.perf_counter() - start
    images = stats.rows.get("images", 0)
    assert images + stats.rows.get("errors", 0) == len(items), "the run lost inputs"
    return {"actors": actors, "seconds": seconds, "images": images,
            "stages": stage_figures(stats, actors), "gpu_util": gpu.mean}


def report(cases: list[dict]) -> list[dict]:
    base = cases[0]["images"] / cases[0]["seconds"] / cases[0]["actors"]
    rows = []
    for case in cases:
        label = f"{case['actors']} actors/stage"
        throughput = case["images"] / case["seconds"]
        rows += [result(label, "throughput", throughput, "images/s"),
                 result(label, "scaling_efficiency", throughput / (case["actors"] * base), "ratio"),
                 result(label, "pipeline_time", case["seconds"], "s")]
        for stage, figures in case["stages"].items():
            rows += [result(label, f"{stage}_busy", figures["busy_s"], "s"),
                     result(label, f"{stage}_idle", figures["idle_s"], "s"),
                     result(label, f"{stage}_ray_task_wall", figures["ray_task_wall_s"], "s"),
                     result(label, f"{stage}_actors_used", figures["actors_used"], "actors")]
        if case["gpu_util"] is not None:
            rows.append(result(label, "gpu_utilisation_mean", case["gpu_util"], "%"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 images, 1 and 2 actors (< 2 min)")
    parser.add_argument("--smoke", action="store_true", help="4 images, 1 actor (seconds plus Ray's start)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    n_images, pool_sizes = (4, [1]) if args.smoke else (12, [1, 2]) if args.quick else (args.images, args.actors)

    import ray
    import torch

    gpus = torch.cuda.device_count()
    # Logical CPUs for every pool at its largest, plus decode and the writers.
    ray.init(address="local", num_cpus=2 * max(pool_sizes) + 4, include_dashboard=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    gpus_per_actor = min(1.0, gpus / (2 * max(pool_sizes))) if gpus else 0.0
    cases = []
    with tempfile.TemporaryDirectory(prefix="samflow-scale-") as tmp:
        workdir = Path(tmp)
        write_sample_dataset(workdir / "src", n_synthetic=n_images, seed=7, include_skimage=False)
        cfg = config_for(1, 0.0)
        items = [{"uri": u, "size": s} for u, s in
                 list_files(str(workdir / "src"), cfg.storage, cfg.input.include, cfg.input.exclude)]
        for actors in pool_sizes:
            case = run_case(items, actors, gpus_per_actor, workdir)
            cases.append(case)
            print(f"{actors} actors/stage: {case['images']} images in {case['seconds']:.1f} s; "
                  + "; ".join(f"{s} busy {f['busy_s']:.1f} s idle {f['idle_s']:.1f} s "
                              f"on {f['actors_used']} actor(s)"
                              for s, f in case["stages"].items()), flush=True)
    ray.shutdown()
    emit("scale", report(cases))


if __name__ == "__main__":
    main()
