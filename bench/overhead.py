"""Pipeline overhead on the CLIP path: the model alone vs `samflow annotate`, in one run.

    python bench/overhead.py [--smoke|--quick] [--images N] [--model random://clip] [--threads 2] [--in-code]

The model is read from a local checkpoint folder, as a user's downloaded model is: an in-code
model (random://, tiny://) is first written to one with save_pretrained (``--in-code`` runs the
in-code model itself, whose random initialisation adds seconds no user pays).

1. model only: this process decodes the JPEGs (untimed), then embeds them with the registry's
   CLIP in batches of ``--batch`` on ``--threads`` torch threads: images/s (model load excluded).
2. pipeline: `samflow annotate` on the same files, segment off, embed on the same model, batch and
   threads (``stages.embed.num_cpus`` = threads: the actor computes on that many torch threads
   whatever share of a CPU the graph fit reserves for it). From the run manifest's phases:
   - per-image rate: images / ``streaming`` (first model batch to the last shard's commit:
     decode, Arrow hand-offs, the model, Parquet writes and commits): the figure compared with
     the model alone, which also leaves out its model load. Goal: >= 90 %.
   - end to end: images / the pipeline phase, which adds Ray's start and the actor's start and
     model load (``ray_start``, ``to_first_batch``): fixed costs per run, printed apart.
   - start-up: the command's start to its first model batch, by phase (the manifest's
     ``timings_s.startup``: process = interpreter, imports and Prefect's server; ray_start; plan;
     actors = actor starts, model loads, the first decode).
3. start-up floor: what must happen one after another before any model batch, each timed alone
   in a fresh process before the runs: the command's ``import ray``, Ray's start, the model
   worker's imports and model load. No reordering of the rest (Prefect, the plan) goes below it.
4. CPU by process group (the model's actor, the command, Prefect's server, Ray's own processes,
   Ray's other workers: decode, writes, Ray Data's actors), sampled from /proc over the start-up
   and the stream; the streaming ceiling is the share of the machine the others left the model.
Also the embed actor's busy seconds and Ray Data's per-operator figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import TreeCpu, annotate_env, emit, result
from PIL import Image

CORES = os.cpu_count() or 1


def write_jpegs(folder: Path, n: int, height: int, width: int) -> list[Path]:
    """Smooth random colour fields (compress like photos, unlike noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
        path = folder / f"img_{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def as_checkpoint(model: str, folder: Path) -> str:
    """An in-code model written as a Hugging Face folder (config, safetensors, tokenizer)."""
    from samflow.models.loading.registry import load_model, parse_uri

    if not parse_uri(model).in_code:
        return model
    runner = load_model("clip", model, device="cpu")
    runner.model.save_pretrained(str(folder), safe_serialization=True)
    runner.tokenizer.save_pretrained(str(folder))
    return str(folder)


def model_only(paths: list[Path], model: str, batch: int, threads: int) -> dict[str, float]:
    import torch

    from samflow.models.loading.registry import load_model

    torch.set_num_threads(threads)
    start = time.perf_counter()
    clip = load_model("clip", model, device="cpu")
    load_s = time.perf_counter() - start
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    clip.embed_images(images[:batch])  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        clip.embed_images(images[i : i + batch])
    seconds = time.perf_counter() - start
    return {"images_per_s": len(images) / seconds, "seconds": seconds, "load_s": load_s}


@contextlib.contextmanager
def services_running() -> Iterator[dict[str, str]]:
    """A Ray head (`ray start --head`) and a Prefect server already up when the command starts, as
    on a machine that runs scheduled jobs: yields the environment that joins both. `--block` keeps
    the head's processes children of one command, so stopping it stops that head alone, never
    another Ray on this machine; the Prefect server is the one `samflow schedule` starts."""
    from samflow.cli.prefect_server import scheduling_server

    env = annotate_env()
    env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    env["RAY_AUTH_MODE"] = "token"  # the command joining the cluster presents the same token
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={CORES}", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        for line in head.stdout:
            if "Ray runtime started" in line:
                break
        else:
            raise SystemExit("the Ray head for the services case did not start")
        with scheduling_server() as (url, _):
            yield dict(env, RAY_ADDRESS=f"127.0.0.1:{port}", PREFECT_API_URL=url)
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)


def pipeline(src: Path, dst: Path, model: str, batch: int, threads: int, extra: list[str],
             env: dict[str, str] | None = None) -> dict:
    settings = [
        "stages.segment.enabled=false",
        f"stages.embed.model={model}",
        f"stages.embed.batch_size={batch}",
        f"stages.embed.num_cpus={threads}",
        *extra,
    ]
    command = [sys.executable, "-m", "samflow.cli.main", "annotate", str(src), "--out", str(dst)]
    for setting in settings:
        command += ["--set", setting]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or annotate_env())
    with TreeCpu(proc.pid, model_marker="EmbedStage") as cpu:
        _, stderr = proc.communicate()
    command_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"annotate failed ({proc.returncode}):\n{stderr[-4000:]}")
    manifest = json.loads(next((dst / "_runs").glob("*.json")).read_text())
    timings = manifest["timings_s"]
    phases = timings.get("pipeline_phases") or {}
    first_batch_s = (timings.get("startup") or {}).get("total", 0.0)
    return {
        "cpu_startup": cpu.window(0.0, first_batch_s),
        "cpu_streaming": cpu.window(first_batch_s, first_batch_s + phases.get("streaming", 0.0)),
        "images": manifest["counts"]["images"],
        "images_per_s": manifest["counts"]["images"] / timings["pipeline"],
        "pipeline_s": timings["pipeline"],
        "command_s": command_s,
        "phases": phases,
        "startup": timings.get("startup") or {},
        "embed_busy_s": timings["stage_busy"].get("embed", 0.0),
        "embed_threads": manifest["models"].get("embed", {}).get("torch_threads"),
        "operators": timings.get("ray_operators", {}),
    }


RAY_START_ALONE = """
import json, time, psutil
import ray
imported_s = time.time() - psutil.Process().create_time()
from samflow.config import RayConfig
from samflow.pipeline.graph import ensure_ray
began = time.perf_counter()
ensure_ray(RayConfig())
print(json.dumps({"import_ray_s": imported_s, "ray_init_s": time.perf_counter() - began}))
ray.shutdown()
"""

MODEL_WORKER_ALONE = """
import json, sys, time, psutil
import ray.data
from samflow.actors.embed import EmbedConfig, EmbedStage
EmbedStage(EmbedConfig(model=sys.argv[1]))
print(json.dumps({"model_worker_s": time.time() - psutil.Process().create_time()}))
"""


def startup_floor(model: str) -> dict[str, float]:
    """What must happen one after another before any model batch, each timed alone in a fresh
    process on the quiet machine: the command imports Ray and starts it (`ray.init`, as samflow
    starts a local Ray), and only then can Ray start the model's worker, which imports Ray Data,
    the stage, torch and the model's family and loads the model. A run adds everything else
    (Prefect, the plan, Ray Data's own actors) and the contention of doing it all at once."""
    figures: dict[str, float] = {}
    for code, argv in ((RAY_START_ALONE, []), (MODEL_WORKER_ALONE, [model])):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                              env=annotate_env(), check=False)
        if proc.returncode != 0:
            raise SystemExit(f"start-up floor measurement failed:\n{proc.stderr[-3000:]}")
        figures.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    figures["total_s"] = figures["import_ray_s"] + figures["ray_init_s"] + figures["model_worker_s"]
    return figures


def cpu_table(title: str, seconds: float, cpu: dict[str, float]) -> str:
    """CPU seconds per process group over a window, each as a share of the machine's CPU time."""
    capacity = max(seconds, 1e-9) * CORES
    parts = [f"{group} {cpu_s:.1f} ({100 * cpu_s / capacity:.0f} %)" for group, cpu_s in cpu.items() if cpu_s >= 0.05]
    return f"  CPU-s over {title} ({seconds:.1f} s x {CORES} cores): " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="8 small images, tiny://clip (seconds + Ray start)")
    parser.add_argument("--quick", action="store_true", help="64 images (< 2 min on 2 cores)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="random://clip")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--in-code", action="store_true", help="run the in-code model, not a checkpoint of it")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra annotate --set KEY=VALUE")
    args = parser.parse_args()
    n, (h, w), model = args.images, (480, 640), args.model
    if args.smoke:
        n, (h, w), model = 8, (96, 128), "tiny://clip"
    elif args.quick:
        n = 64
    with tempfile.TemporaryDirectory(prefix="samflow-overhead-") as tmp:
        paths = write_jpegs(Path(tmp) / "src", n, h, w)
        label = f"{model} ({'in code' if args.in_code else 'checkpoint folder'})"
        if not args.in_code:
            model = as_checkpoint(model, Path(tmp) / "model")
        floor = startup_floor(model)
        before = model_only(paths, model, args.batch, args.threads)
        run = pipeline(Path(tmp) / "src", Path(tmp) / "out", model, args.batch, args.threads, args.extra)
        # Timed again after the pipeline; the faster of the two is the reference, so a machine
        # that got busier (or quieter) during the run does not flatter the pipeline's figure.
        after = model_only(paths, model, args.batch, args.threads)
        # Start-up again with Ray and Prefect already running (a fresh output, a few images).
        few = Path(tmp) / "few"
        few.mkdir()
        for path in paths[:64]:
            shutil.copy(path, few / path.name)
        with services_running() as env:
            warm = pipeline(few, Path(tmp) / "out-warm", model, args.batch, args.threads, args.extra, env)
    alone = max(before, after, key=lambda figures: figures["images_per_s"])
    print(f"model only:  {alone['images_per_s']:8.2f} images/s ({n} images, {args.threads} threads, batches of "
          f"{args.batch}; before / after the pipeline: {before['images_per_s']:.2f} / {after['images_per_s']:.2f})")
    phases = run["phases"]
    streaming = run["images"] / max(phases.get("streaming", run["pipeline_s"]), 1e-9)
    ratio = streaming / alone["images_per_s"]
    print(f"pipeline:    {streaming:8.2f} images/s per image over the stream ({phases.get('streaming', 0):.1f} s, "
          f"first model batch to last commit; embed busy {run['embed_busy_s']:.1f} s on "
          f"{run['embed_threads']} torch threads) "
          f"= {100 * ratio:.0f} % of the model alone")
    print(f"end to end:  {run['images_per_s']:8.2f} images/s over the pipeline phase ({run['pipeline_s']:.1f} s) = "
          f"{100 * run['images_per_s'] / alone['images_per_s']:.0f} % of the model alone; fixed costs: "
          f"Ray start {phases.get('ray_start', 0):.1f} s, actor start + model load + first decode "
          f"{phases.get('to_first_batch', 0):.1f} s (model load here: {before['load_s']:.1f} s)")
    print(f"command:     {run['images'] / run['command_s']:8.2f} images/s over the whole command "
          f"({run['command_s']:.1f} s, {run['images']} images: start-up, stream, commit, Ray's and Prefect's stop)")
    startup, warm_startup = run["startup"], warm["startup"]
    print(f"start-up:    {startup.get('total', 0):8.1f} s from the command's start to its first model batch: "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in startup.items() if name != "total"))
    print(f"             {warm_startup.get('total', 0):8.1f} s with Ray and a Prefect server already running: "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in warm_startup.items() if name != "total"))
    print(f"             {floor['total_s']:8.1f} s floor: what must run one after another, each alone on this machine: "
          f"the command's Python and `import ray` {floor['import_ray_s']:.1f} s, Ray's start {floor['ray_init_s']:.1f} s, "
          f"the model worker (Python, Ray Data, the stage, torch, the model family, the load) {floor['model_worker_s']:.1f} s")
    print(cpu_table("start-up", startup.get("total", 0.0), run["cpu_startup"]))
    streaming_s = phases.get("streaming", 0.0)
    others = sum(cpu_s for group, cpu_s in run["cpu_streaming"].items() if group != "model")
    ceiling = 1 - others / max(streaming_s * CORES, 1e-9)
    print(cpu_table("the stream", streaming_s, run["cpu_streaming"]))
    print(f"  streaming ceiling: {100 * ceiling:.0f} % of the model alone (the share of the machine the other "
          f"processes left the model during the stream, the model alone using every core)")
    for name, figures in run["operators"].items():
        print(f"  {name:<48} task wall {figures['task_wall_s']:7.1f} s  span {figures['span_s']:7.1f} s")
    case = f"{label}, {n} JPEG {w}x{h}, batch {args.batch}, {args.threads} threads"
    emit("overhead", [
        result(case, "model_only_throughput", alone["images_per_s"], "images/s"),
        result(case, "pipeline_throughput_streaming", streaming, "images/s"),
        result(case, "pipeline_over_model", ratio, "ratio"),
        result(case, "pipeline_throughput_end_to_end", run["images_per_s"], "images/s"),
        result(case, "end_to_end_over_model", run["images_per_s"] / alone["images_per_s"], "ratio"),
        result(case, "model_load", before["load_s"], "s"),
        result(case, "ray_start", phases.get("ray_start", 0.0), "s"),
        result(case, "to_first_batch", phases.get("to_first_batch", 0.0), "s"),
        result(case, "pipeline_time", run["pipeline_s"], "s"),
        result(case, "command_throughput", run["images"] / run["command_s"], "images/s"),
        result(case, "command_time", run["command_s"], "s"),
        *(result(case, f"startup_{name}", seconds, "s") for name, seconds in startup.items()),
        *(result(case, f"startup_services_running_{name}", seconds, "s") for name, seconds in warm_startup.items()),
        *(result(case, f"startup_floor_{name.removesuffix('_s')}", seconds, "s") for name, seconds in floor.items()),
        *(result(case, f"startup_cpu_{group.replace(' ', '_')}", cpu_s, "cpu-s") for group, cpu_s in run["cpu_startup"].items()),
        *(result(case, f"streaming_cpu_{group.replace(' ', '_')}", cpu_s, "cpu-s") for group, cpu_s in run["cpu_streaming"].items()),
        result(case, "streaming_ceiling", ceiling, "ratio"),
        result(case, "embed_busy", run["embed_busy_s"], "s"),
        result(case, "embed_actor_throughput", run["images"] / max(run["embed_busy_s"], 1e-9), "images/s"),
    ])


if __name__ == "__main__":
    main()
