"""Plan time and storage requests against committed history of 1k, 10k and 100k shards; plan time
and driver peak memory for synthetic manifests of 10k, 100k and 1M items.

History: on a local S3 server (moto), an output whose shards were committed and compacted (one
marker checkpoint, the done keys in the bucketed table) plus the markers of a last run not yet
compacted, and a manifest of 10k new items; `samflow plan`'s code plans it through a proxy that
counts every request (tests/helpers/s3_proxy.py), workers' included. Neither the seconds nor the
requests may grow with the history, and the plan stays within a few hundred requests. A run's
start-up cleanup (what killed runs left) is counted too: once sweeping an output written before
commit intents, then as every later run does.

Each case writes a manifest (Parquet, synthetic s3:// URIs) and a done-set holding half of its
keys, then runs `samflow plan`'s code (make_plan, read-only) in a fresh driver process on a local
Ray, so every case's peak RSS is its own; then a run's plan (which also cuts the items still to do
into the blocks the run streams, at most inputs.MAX_ITEM_BLOCKS of them). The driver's memory must
stay flat as the item count grows (the listing and the done-set live in Ray, not on the driver):
the bench prints the growth from 100k to 1M (target: under 20 %), and each plan's own increment
over the driver's RSS before it (imports and Ray's start-up are most of the peak).

    PYTHONPATH=. python bench/plan.py [--smoke | --quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import emit, result

ROOT = Path(__file__).resolve().parents[1]


ROWS_PER_FILE = 100_000
DONE_FILES = 4
KEYS_PER_SHARD = 4  # done keys (and marker URIs) per committed shard of the history
TAIL_MARKERS = 100  # shards the last run committed and has not compacted yet
REQUEST_LIMIT = 300  # "a few hundred"


def _uris(start: int, stop: int) -> pa.Array:
    return pa.array([f"s3://synthetic-bucket/images/{n // 1000:06d}/{n:09d}.jpg" for n in range(start, stop)])


def write_case(folder: Path, items: int) -> tuple[str, str]:
    """A manifest of ``items`` URIs and a DST whose done-set commits every second one."""
    src, dst = folder / "manifest", folder / "out"
    src.mkdir(parents=True)
    for first in range(0, items, ROWS_PER_FILE):
        last = min(items, first + ROWS_PER_FILE)
        pq.write_table(pa.table({"uri": _uris(first, last)}), src / f"part-{first // ROWS_PER_FILE:05d}.parquet")
    (dst / "_done").mkdir(parents=True)
    (dst / "_commits").mkdir()
    done = _uris(0, items).filter(pa.array([n % 2 == 0 for n in range(items)]))
    step = -(-len(done) // DONE_FILES)
    for index in range(DONE_FILES):
        shard = f"bench{index:04d}"
        part = done.slice(index * step, step)
        pq.write_table(pa.table({"key": part, "container": pa.array([""] * len(part))}),
                       dst / "_done" / f"{shard}.parquet")
        marker = {"shard": shard, "run_id": "bench", "uris": [], "rows": {"_done": len(part)}}
        (dst / "_commits" / f"{shard}.json").write_text(json.dumps(marker))
    return str(src), str(dst)


def run_case(src: str, dst: str) -> dict[str, float]:
    """In this (fresh) process: start Ray, then plan; time and peak RSS of the driver."""
    from samflow.config import load_config
    from samflow.flows.annotate import make_plan
    from samflow.pipeline.graph import ensure_ray

    cfg = load_config()
    ensure_ray(cfg.ray)
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    plan = make_plan(src, dst, cfg, read_only=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    run_plan = make_plan(src, dst, cfg)  # nothing uncommitted to remove; the done-set is not rewritten
    run_seconds = time.perf_counter() - start
    run_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    blocks = run_plan.items.num_blocks() if run_plan.new else 0
    return {"seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": before, "new": plan.new,
            "done": plan.already_done, "format": plan.format, "run_seconds": run_seconds,
            "run_peak_rss_mb": run_peak, "run_new": run_plan.new, "run_blocks": blocks}


def _child(items: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="sfplan") as tmp:
        src, dst = write_case(Path(tmp), items)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
        env["PYTHONPATH"] = str(ROOT)
        done = subprocess.run([sys.executable, __file__, "--case", src, dst], env=env,
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise SystemExit(f"case {items} failed:\n{done.stderr[-3000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    if (figures["new"], figures["done"], figures["run_new"]) != (items // 2, items - items // 2, items // 2):
        raise SystemExit(f"case {items}: wrong plan {figures}")
    return figures


def history_cases(sizes: list[int], new_items: int, warm_up: bool = True, tail: int = TAIL_MARKERS) -> list[dict]:
    """Each history size planned against one manifest of ``new_items`` new URIs, on a local S3
    server, requests counted at a proxy in front of it (``warm_up``: a first, unreported plan, so
    that the first reported seconds are not a cold start's)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.helpers.s3_proxy import FaultProxy, Faults

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        os.environ[name] = value  # before Ray starts: its workers inherit them
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    try:
        return _plan_histories(endpoint, sizes, new_items, FaultProxy, Faults, warm_up, tail)
    finally:
        server.stop()


def _plan_histories(endpoint: str, sizes: list[int], new_items: int, proxy_class, faults_class,
                    warm_up: bool, tail: int) -> list[dict]:
    from samflow.config import StorageConfig, load_config
    from samflow.flows.annotate import make_plan
    from samflow.pipeline.graph import ensure_ray
    from samflow.store.storage import write_bytes
    from tests.helpers.history import checkpointed_history

    storage = StorageConfig(endpoint_url=endpoint)
    src = "s3://bench/src/manifest.parquet"
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"uri": [f"s3://bench/new/{n:09d}.jpg" for n in range(new_items)]}), buffer)
    write_bytes(src, buffer.getvalue().to_pybytes(), storage)
    cfg = load_config()
    ensure_ray(cfg.ray)
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    figures = []
    cases = [sizes[0], *sizes] if warm_up else [None, *sizes]  # the first, a warm-up, is not reported
    for index, shards in enumerate(cases):
        if shards is None:
            continue
        dst = f"s3://bench/out-{index}-{shards}"
        checkpointed_history(dst, storage, shards, KEYS_PER_SHARD, tail)
        with proxy_class(endpoint, faults_class()) as proxy:
            counted = load_config(overrides=[f"storage.endpoint_url={proxy.url}"])
            start = time.perf_counter()
            plan = make_plan(src, dst, counted, read_only=True)
            seconds = time.perf_counter() - start
        if plan.new != new_items:
            raise SystemExit(f"history {shards}: planned {plan.new} new items, not {new_items}")
        first, cleanup = (_cleanup_requests(dst, endpoint, proxy_class, faults_class) for _ in range(2))
        if index:
            figures.append({"shards": shards, "seconds": seconds, "requests": sum(proxy.faults.kinds.values()),
                            "kinds": dict(proxy.faults.kinds), "first_cleanup": first, "cleanup": cleanup})
    return figures


def _cleanup_requests(dst: str, endpoint: str, proxy_class, faults_class) -> dict[str, int]:
    """Requests of a run's start-up cleanup (Catalog.remove_uncommitted) given the committed names:
    the first on an output written without intents sweeps its tables once, later ones read intents."""
    from samflow.config import StorageConfig
    from samflow.store.catalog import Catalog

    committed = Catalog(dst, StorageConfig(endpoint_url=endpoint)).committed_names()
    with proxy_class(endpoint, faults_class()) as proxy:
        Catalog(dst, StorageConfig(endpoint_url=proxy.url)).remove_uncommitted(committed)
    return dict(proxy.faults.kinds)


def _label(count: int) -> str:
    return f"{count // 1000}k" if count >= 1000 else str(count)


def report_histories(figures: list[dict], new_items: int) -> list[dict]:
    results = []
    for case in figures:
        label = f"{_label(case['shards'])} shards"
        print(f"{label:>12} committed: plan of {new_items} new items {case['seconds']:.1f} s, "
              f"{case['requests']} storage requests {case['kinds']}")
        results.append(result(label, "history_plan_s", case["seconds"], "s"))
        results.append(result(label, "history_plan_requests", case["requests"], "requests"))
        print(f"{'':>12} a run's start-up cleanup: {sum(case['cleanup'].values())} requests {case['cleanup']} "
              f"(the first on this output, sweeping its tables once: {sum(case['first_cleanup'].values())})")
        results.append(result(label, "run_cleanup_requests", sum(case["cleanup"].values()), "requests"))
        results.append(result(label, "first_run_cleanup_requests", sum(case["first_cleanup"].values()), "requests"))
    requests = [case["requests"] for case in figures]
    if max(requests) > REQUEST_LIMIT:
        raise SystemExit(f"a plan made {max(requests)} storage requests (limit {REQUEST_LIMIT})")
    growth = requests[-1] - requests[0]
    print(f"requests, smallest to largest history: {growth:+d}")
    results.append(result(f"{_label(figures[0]['shards'])}->{_label(figures[-1]['shards'])}",
                          "history_requests_growth", growth, "requests"))
    cleanups = [sum(case["cleanup"].values()) for case in figures]
    if cleanups[-1] != cleanups[0]:
        raise SystemExit(f"a run's start-up cleanup grew with the history: {cleanups}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    histories = [10, 100] if args.smoke else [1000, 10_000] if args.quick else [1000, 10_000, 100_000]
    new_items = 1000 if args.smoke else 10_000
    # --smoke: every path runs; its seconds mean nothing, so no warm-up plan before them.
    results = report_histories(history_cases(histories, new_items, warm_up=not args.smoke,
                                             tail=10 if args.smoke else TAIL_MARKERS), new_items)
    sizes = [2000] if args.smoke else [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    peaks, run_peaks = {}, {}
    for items in sizes:
        figures = _child(items)
        label = f"{items // 1000}k" if items < 1_000_000 else f"{items // 1_000_000}M"
        peaks[items] = figures["peak_rss_mb"]
        print(f"{label:>5} manifest items: plan {figures['seconds']:.1f} s, driver peak RSS "
              f"{figures['peak_rss_mb']:.0f} MiB (before plan {figures['rss_before_mb']:.0f} MiB), "
              f"{figures['new']} new / {figures['done']} done; run's plan {figures['run_seconds']:.1f} s, "
              f"peak RSS {figures['run_peak_rss_mb']:.0f} MiB, {figures['run_blocks']} item blocks")
        results.append(result(label, "plan_s", figures["seconds"], "s"))
        results.append(result(label, "driver_peak_rss", figures["peak_rss_mb"], "MiB"))
        results.append(result(label, "plan_rss_increment", figures["peak_rss_mb"] - figures["rss_before_mb"], "MiB"))
        results.append(result(label, "run_plan_s", figures["run_seconds"], "s"))
        results.append(result(label, "run_plan_driver_peak_rss", figures["run_peak_rss_mb"], "MiB"))
        run_peaks[items] = figures["run_peak_rss_mb"]
    if 100_000 in peaks and 1_000_000 in peaks:
        growth = 100 * (peaks[1_000_000] / peaks[100_000] - 1)
        print(f"driver memory growth 100k -> 1M: {growth:+.1f} % (target < 20 %)")
        results.append(result("100k->1M", "driver_rss_growth", growth, "%"))
        run_growth = 100 * (run_peaks[1_000_000] / run_peaks[100_000] - 1)
        print(f"run's plan, driver memory growth 100k -> 1M: {run_growth:+.1f} % (target < 20 %)")
        results.append(result("100k->1M", "run_plan_driver_rss_growth", run_growth, "%"))
    emit("plan", results)


if __name__ == "__main__":
    main()
