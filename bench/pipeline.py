"""End-to-end throughput and peak memory of `samflow annotate` (tiny models, CPU, local Ray).

    python bench/pipeline.py [--smoke|--quick] [--sizes 100 1000] [--code DIR]

Each size runs `samflow annotate --profile tiny` in a fresh process on a synthetic dataset, so the
figures include decode, segment, embed and the Parquet commit; images/s is over the pipeline
phase (from the run manifest), and peak memory is the PSS of the whole process tree (driver,
raylet, workers; shared pages counted once). ``--code DIR`` runs another checkout's samflow
(e.g. the commit before a change) with the same bench, for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TreeMemory, annotate_env, emit, result

from samflow.scenes.sample import write_sample_dataset


def run_case(n_images: int, workdir: Path, code: Path | None = None) -> list[dict]:
    src = workdir / f"src-{n_images}"
    write_sample_dataset(src, n_synthetic=n_images, seed=n_images, include_skimage=False)
    dst = workdir / f"out-{n_images}"
    command = [sys.executable, "-m", "samflow.cli.main", "annotate", str(src), "--out", str(dst), "--profile", "tiny"]
    env = annotate_env(code)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=code)
    with TreeMemory(proc.pid) as memory:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"annotate failed ({proc.returncode}):\n{stderr[-4000:]}")
    manifest = json.loads(next((dst / "_runs").glob("*.json")).read_text())
    pipeline_s = manifest["timings_s"]["pipeline"]
    case = f"{n_images} images"
    return [
        result(case, "throughput", manifest["counts"]["images"] / pipeline_s, "images/s"),
        result(case, "pipeline_time", pipeline_s, "s"),
        result(case, "wall_time_incl_startup", wall, "s"),
        result(case, "peak_pss_process_tree", memory.peak_bytes / 2**20, "MiB"),
        result(case, "annotations", manifest["counts"]["annotations"], "rows"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="8 images (seconds plus Ray's start)")
    parser.add_argument("--quick", action="store_true", help="100 images only (< 2 min on 2 cores)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--code", type=Path, default=None, help="repository root whose samflow to run")
    args = parser.parse_args()
    sizes = [8] if args.smoke else [100] if args.quick else args.sizes
    results = []
    with tempfile.TemporaryDirectory(prefix="samflow-bench-") as tmp:
        for n in sizes:
            case_results = run_case(n, Path(tmp), args.code)
            for row in case_results:
                print(f"{row['case']:>12}  {row['metric']:<24} {row['value']:>10} {row['unit']}")
            results.extend(case_results)
    emit("pipeline", results)


if __name__ == "__main__":
    main()
