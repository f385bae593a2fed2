"""Vector index builds and queries (samflow.index): clustered unit vectors, d=512.

    python bench/index.py [--smoke | --quick] [--rerank file|sq8] [--workers 1 2] [--sizes 1M 4M]
    smoke: 20k; quick: 100k; full: 100k, 1M and 4M

``--workers``: IVF-PQ builds are also run with their encoding in N Ray tasks (a local Ray of N
CPUs; ``samflow index build --ray-tasks N``): build time and the peak RSS of each Ray worker
process (its high-water mark), beside the driver's. ``--sizes`` narrows the IVF-PQ sizes.

Per case (each in its own process, so peak RSS is that case's alone): build time (collect,
train, add, recall check), peak RSS, single-query latency p50/p99, batched queries/s, and
recall@10 against exact search on 300 held-out queries drawn from the same clusters.
Vectors are generated and streamed to the builder in 20k-row "files", never held whole.
IVF-PQ is samflow's: 4-bit PQ fast scan, the best refine_factor x k candidates re-scored exactly
from the float32 file on disk (``--rerank sq8``: the earlier method, candidates first re-ranked by
in-memory SQ8 codes, FAISS IndexRefine); nprobe and the refine factor tuned at build time on
held-out queries (the manifest's ``method`` and ``tuning``).
Targets on a 2-core CPU at 1M: build <= 4 min, peak RSS <= 1.5 GB and flat in N,
recall@10 >= 0.95, p50 <= 2 ms.

The ``add`` case goes through a local DST as ``samflow index build|add|compact`` do (committed
Parquet shards, published segments): an IVF-PQ index of the base vectors, then ``index add`` of
10k new ones. It reports the bytes that add wrote (files new or changed under ``_index/``: the
new segment and the manifest, what it uploads to S3) against the bytes of the whole index as one
segment after ``index compact`` (what every ``index add`` republished before segments), the add
and compaction times, and recall@10 of the segmented index against exact search.
Prints figures; the last line is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, result

DIM = 512
CLUSTERS = 1000
FILE_ROWS = 20_000
QUERIES = 300


def _centres(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def _points(centres: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Points around random centres; the spread keeps clusters overlapping enough that the
    nearest neighbours inside one are not trivially separable."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, DIM), dtype=np.float32) * np.float32(0.8 / np.sqrt(DIM))
    points = centres[rng.integers(0, CLUSTERS, n)] + noise
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def _sources(n: int, centres: np.ndarray):
    import pyarrow as pa

    from samflow.index.source import VectorBatch

    def one_file(start: int, rows: int):
        vectors = _points(centres, rows, seed=1000 + start // FILE_ROWS)
        ids = pa.array([f"item-{start + i}" for i in range(rows)])
        meta = pa.table({"item_id": ids, "annotation_id": pa.nulls(rows, pa.string()), "uri": ids})
        yield VectorBatch(vectors, meta)

    return [(f"file-{start}", lambda s=start: one_file(s, min(FILE_ROWS, n - s))) for start in range(0, n, FILE_ROWS)]


def _ray_workers_peak_rss_mb() -> list[float]:
    """The high-water RSS of each worker process of the Ray this process started (its raylet's
    children; Linux /proc)."""
    import psutil

    peaks = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "default_worker.py" not in cmdline and not cmdline.startswith("ray::"):
            continue
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
    return sorted(peaks, reverse=True)


def run_case(n: int, index_type: str, rerank: str, workers: int = 0) -> dict:
    """One case in this process: build (encoding in ``workers`` Ray tasks; 0: here), then
    query; returns the figures."""
    from samflow.index.build import Build, BuildParams, exact_top_k, peak_rss_mb
    from samflow.index.search import Searcher
    from samflow.index.store import VECTORS, VectorFile

    centres = _centres()
    parallel = None
    if workers:
        import ray

        from samflow.pipeline.index_parts import ray_parallel

        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        parallel = ray_parallel(workers)
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        work = Path(tmp)
        build = Build(work, BuildParams(index=index_type, rerank=rerank), "image", "bench", parallel=parallel)
        start = time.perf_counter()
        manifest = build.run(_sources(n, centres))
        build_s = time.perf_counter() - start
        worker_peaks = _ray_workers_peak_rss_mb() if workers else []
        searcher = Searcher(work, manifest)
        queries = _points(centres, QUERIES, seed=7)
        truth = exact_top_k(VectorFile(work / VECTORS, DIM), n, queries, 10, 65_536)
        for query in queries[:20]:  # warm-up (page cache, thread pool)
            searcher.search(query[None], 10)
        latencies = []
        for query in queries:
            t0 = time.perf_counter()
            searcher.search(query[None], 10)
            latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, found = searcher.search(queries, 10)
        qps = len(queries) / (time.perf_counter() - t0)
        recall = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth.tolist(), found.tolist())]))
        return {
            "type": manifest["type"], "method": manifest.get("method", manifest["type"]),
            "params": {k: manifest["params"][k] for k in ("nlist", "pq_m", "nprobe", "refine_factor", "rerank")},
            "build_s": build_s, "peak_rss_mb": peak_rss_mb(), "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99)), "qps": qps, "recall_at_10": recall,
            "manifest_recall_at_10": manifest["recall_at_10"],
            "tuning": manifest.get("tuning", []),
            "encode_nodes": build.state.get("encode_nodes", 0),
            "worker_peak_rss_mb": worker_peaks[:workers],
        }


ADDED = 10_000


def _files(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _write_shards(dst: str, centres: np.ndarray, first: int, n: int) -> None:
    from tests.helpers.index_data import write_image_shard

    for start in range(first, first + n, FILE_ROWS):
        rows = min(FILE_ROWS, first + n - start)
        write_image_shard(dst, f"shard-{start}", _points(centres, rows, seed=1000 + start // FILE_ROWS), first=start)


def run_add_case(base: int) -> dict:
    """Build an IVF-PQ index of ``base`` vectors in a local DST, add ADDED more, compact."""
    from samflow.index import store
    from samflow.index.build import BuildParams, exact_top_k, overlap, peak_rss_mb
    from samflow.index.commands import OpenIndex
    from samflow.index.updates import add_to_index, build_index, compact_index

    centres = _centres()
    with tempfile.TemporaryDirectory(prefix="bench-index-add-") as tmp:
        dst = f"{tmp}/run"
        _write_shards(dst, centres, 0, base)
        build_index(dst, "image", BuildParams(index="ivfpq"))
        _write_shards(dst, centres, base, ADDED)
        root = Path(dst) / "_index" / "image"
        before = _files(root)
        start = time.perf_counter()
        added = add_to_index(dst, "image")
        add_s = time.perf_counter() - start
        written = sum(size for p, (size, mtime) in _files(root).items() if before.get(p) != (size, mtime))
        index = OpenIndex(dst)
        queries = _points(centres, QUERIES, seed=7)
        truth = exact_top_k(index.searcher.vectors, base + ADDED, queries, 10, 65_536)
        recall = overlap(truth, index.searcher.search(queries, 10)[1])
        start = time.perf_counter()
        compacted = compact_index(dst, "image")
        compact_s = time.perf_counter() - start
        whole = sum(p.stat().st_size for p in (root / compacted["build_id"]).iterdir())
        whole += (root / store.MANIFEST).stat().st_size
        return {"segments": len(added["segments"]), "add_bytes": written, "whole_index_bytes": whole,
                "add_s": add_s, "compact_s": compact_s, "recall_at_10": recall, "peak_rss_mb": peak_rss_mb()}


def _in_child(n: int, index_type: str, rerank: str, workers: int = 0) -> dict:
    # Sleeping, not spinning, OpenMP workers: on a shared CPU spinning threads slow FAISS ~5x.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, __file__, "--case", str(n), "--type", index_type,
                          "--rerank", rerank, "--workers", str(workers)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def _size(label: str) -> int:
    number, unit = label[:-1], label[-1].lower()
    return int(float(number) * {"k": 1_000, "m": 1_000_000}[unit])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true")
    mode.add_argument("--quick", action="store_true")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--type", default="ivfpq", help=argparse.SUPPRESS)
    parser.add_argument("--rerank", default="file", choices=("file", "sq8"),
                        help="IVF-PQ re-ranking: file (exact, from disk; default) or sq8 (in-memory codes first)")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="also build IVF-PQ with its encoding in N Ray tasks, for each N (default: 1 2; smoke: 2)")
    parser.add_argument("--sizes", nargs="+", default=None, help="IVF-PQ sizes to build, e.g. 1M 4M")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if args.case:
        workers = args.workers[0] if args.workers else 0
        figures = (run_add_case(args.case) if args.type == "add"
                   else run_case(args.case, args.type, args.rerank, workers))
        print(json.dumps(figures))
        return
    sizes = [20_000] if args.smoke else [100_000] if args.quick else [100_000, 1_000_000, 4_000_000]
    sizes = [_size(label) for label in args.sizes] if args.sizes else sizes
    cases = [(n, "ivfpq", 0) for n in sizes]
    if not args.sizes:
        cases.insert(0, (sizes[0], "flat", 0))
    for workers in args.workers or ([2] if args.smoke else [1, 2]):
        cases += [(n, "ivfpq", workers) for n in sizes]
    results = []
    for n, index_type, workers in cases:
        figures = _in_child(n, index_type, args.rerank, workers)
        case = f"{_label(n)} {figures['type']}" + (f" {args.rerank}" if figures["type"] == "ivfpq" else "")
        case += f" ray_tasks={workers}" if workers else ""
        print(f"{case}: {json.dumps(figures)}", flush=True)
        results += [
            result(case, "build_time", figures["build_s"], "s"),
            result(case, "peak_rss", figures["peak_rss_mb"], "MB"),
            *[result(case, f"worker_{i}_peak_rss", mb, "MB") for i, mb in enumerate(figures["worker_peak_rss_mb"])],
            result(case, "query_p50", figures["p50_ms"], "ms"),
            result(case, "query_p99", figures["p99_ms"], "ms"),
            result(case, "queries_per_s", figures["qps"], "1/s"),
            result(case, "recall_at_10", figures["recall_at_10"], "fraction"),
        ]
    for base in sizes:
        figures = _in_child(base, "add", args.rerank)
        case = f"{_label(base)} ivfpq + index add {_label(ADDED)}"
        print(f"{case}: {json.dumps(figures)}", flush=True)
        results += [
            result(case, "add_bytes_written", figures["add_bytes"], "bytes"),
            result(case, "whole_index_bytes", figures["whole_index_bytes"], "bytes"),
            result(case, "add_time", figures["add_s"], "s"),
            result(case, "compact_time", figures["compact_s"], "s"),
            result(case, "recall_at_10_segmented", figures["recall_at_10"], "fraction"),
            result(case, "peak_rss", figures["peak_rss_mb"], "MB"),
        ]
    emit("index", results)


if __name__ == "__main__":
    main()
