"""Fitting the graph to the cluster: plain numbers first, then real `ray start --head` clusters
with as few CPUs as users start them, driven through `samflow submit`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from samflow.pipeline.resources import (
    Capacity,
    ResourceShortage,
    StageRequest,
    fit_graph,
    wait_for_fit,
)
from tests.helpers.ray_head import running_head

ROOT = Path(__file__).resolve().parents[2]

SEG = StageRequest("segment", num_cpus=1.0, num_gpus=0.0, min_actors=1)
EMB = StageRequest("embed", num_cpus=1.0, num_gpus=0.0, min_actors=1)


def _total_cpus(fit, requests) -> float:
    actors = sum(fit.stages[r.name].num_cpus * r.min_actors for r in requests)
    return actors + fit.decode_cpus + fit.write_cpus + fit.item_cpus


# ----------------------------------------------------------------------------- plain numbers


@pytest.mark.parametrize("cpus", [1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
@pytest.mark.parametrize("containers", [False, True])
def test_decode_and_write_always_find_room_next_to_the_actors(cpus, containers):
    requests = [SEG, EMB, StageRequest("track", 1.0, 0.0, 1)]
    fit = fit_graph(requests, Capacity(cpus=cpus, gpus=0.0), cpu_fallback=False, reads_containers=containers)
    assert fit.decode_cpus > 0 and fit.write_cpus > 0 and (fit.item_cpus > 0) == containers
    assert all(fit.stages[r.name].num_cpus > 0 for r in requests)
    minimum = _total_cpus(fit, requests)
    assert minimum <= cpus + 1e-9
    # Ray Data reserves at most ratio * cluster / operators on top of each operator's minimum:
    # the run's ratio keeps all of those reservations inside the cluster.
    assert fit.reservation_ratio * cpus + minimum <= cpus + 1e-9


def test_ray_datas_default_reservation_is_kept_where_it_fits():
    fit = fit_graph([SEG, EMB], Capacity(cpus=16.0, gpus=0.0), cpu_fallback=False, reservation_ratio=0.5)
    assert fit.reservation_ratio == 0.5 and fit.notes == []
    small = fit_graph([SEG, EMB], Capacity(cpus=2.0, gpus=0.0), cpu_fallback=False, reservation_ratio=0.5)
    assert small.reservation_ratio < 0.5
    assert any("reservation ratio" in note for note in small.notes)


def test_a_large_cluster_keeps_the_configured_amounts():
    requests = [SEG, StageRequest("embed", 2.0, 0.0, min_actors=3)]
    fit = fit_graph(requests, Capacity(cpus=64.0, gpus=0.0), cpu_fallback=False)
    assert fit.stages["segment"].num_cpus == 1.0 and fit.stages["embed"].num_cpus == 2.0
    assert (fit.decode_cpus, fit.write_cpus) == (1.0, 0.5)
    assert fit.notes == []


def test_shrinking_keeps_the_ratio_between_stages_and_says_so():
    requests = [StageRequest("segment", 2.0, 0.0, 1), EMB]
    fit = fit_graph(requests, Capacity(cpus=2.0, gpus=0.0), cpu_fallback=False)
    assert fit.stages["segment"].num_cpus == pytest.approx(2 * fit.stages["embed"].num_cpus, abs=1e-3)
    assert any("segment" in note and "num_cpus" in note for note in fit.notes)


def test_an_actor_is_never_wider_than_the_largest_node():
    requests = [StageRequest("segment", 8.0, 0.0, 1)]
    capacity = Capacity(cpus=16.0, gpus=0.0, nodes=((4.0, 0.0),) * 4)
    assert fit_graph(requests, capacity, cpu_fallback=False).stages["segment"].num_cpus == 4.0


def test_gpu_stage_on_a_gpu_cluster_keeps_its_gpus():
    requests = [StageRequest("segment", 1.0, 0.5, 2), EMB]
    fit = fit_graph(requests, Capacity(cpus=8.0, gpus=1.0, nodes=((8.0, 1.0),)), cpu_fallback=False)
    assert fit.stages["segment"].num_gpus == 0.5 and fit.stages["embed"].num_gpus == 0.0


def test_gpu_stage_without_gpus_falls_back_to_cpu_when_allowed():
    requests = [StageRequest("segment", 1.0, 1.0, 1), EMB]
    fit = fit_graph(requests, Capacity(cpus=2.0, gpus=0.0), cpu_fallback=True)
    assert fit.stages["segment"].num_gpus == 0.0
    assert any("cpu_fallback" in warning for warning in fit.warnings)


@pytest.mark.parametrize(
    ("capacity", "why"),
    [
        (Capacity(cpus=4.0, gpus=0.0), "has none"),
        (Capacity(cpus=4.0, gpus=1.0, nodes=((4.0, 1.0),)), "cluster has 1"),  # 2 actors x 1 GPU
        (Capacity(cpus=8.0, gpus=2.0, nodes=((4.0, 1.0), (4.0, 1.0))), "largest node has 1"),
    ],
)
def test_gpu_shortage_without_fallback_names_the_resource_and_the_fix(capacity, why):
    wide = 2.0 if capacity.gpus == 2.0 else 1.0
    requests = [StageRequest("segment", 1.0, wide, 1 if wide == 2.0 else 2)]
    with pytest.raises(ResourceShortage) as caught:
        fit_graph(requests, capacity, cpu_fallback=False)
    message = str(caught.value)
    assert caught.value.resource == "GPU" and not caught.value.may_resolve
    assert "segment" in message and why in message
    assert "ray.cpu_fallback=true" in message and "no autoscaler" in message


def test_a_cluster_without_cpus_is_short_of_cpu():
    with pytest.raises(ResourceShortage, match="no CPU") as caught:
        fit_graph([SEG], Capacity(cpus=0.0, gpus=1.0), cpu_fallback=False)
    assert caught.value.resource == "CPU"


class _Clock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_waits_for_the_autoscaler_then_fits_when_a_gpu_node_joins():
    clock = _Clock()
    requests = [StageRequest("segment", 1.0, 1.0, 1)]

    def capacity() -> Capacity:
        gpus = 1.0 if clock.now >= 20 else 0.0
        return Capacity(cpus=4.0, gpus=gpus, autoscaling=True)

    fit = wait_for_fit(requests, capacity, cpu_fallback=False, wait_s=60, poll_s=5,
                       sleep=clock.sleep, clock=lambda: clock.now)
    assert fit.stages["segment"].num_gpus == 1.0
    assert clock.now == 20


def test_gives_up_after_the_configured_wait_and_fails_at_once_without_autoscaler():
    clock = _Clock()
    requests = [StageRequest("segment", 1.0, 1.0, 1)]
    with pytest.raises(ResourceShortage, match="resource_wait_s"):
        wait_for_fit(requests, lambda: Capacity(cpus=4.0, gpus=0.0, autoscaling=True),
                     cpu_fallback=False, wait_s=12, poll_s=5, sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.now == 12 and clock.sleeps == [5, 5, 2]
    clock = _Clock()
    with pytest.raises(ResourceShortage):
        wait_for_fit(requests, lambda: Capacity(cpus=4.0, gpus=0.0, autoscaling=False),
                     cpu_fallback=False, wait_s=600, sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.sleeps == []


# ------------------------------------------------------------------ real `ray start --head`

IMAGES = 5


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        Image.fromarray(rng.integers(0, 255, (48 + 8 * index, 64, 3), dtype=np.uint8)).save(src / f"im{index}.png")
    (src / "broken.jpg").write_bytes(b"this is not a jpeg")
    return src


def _submit(address: str, token: str, job: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), RAY_AUTH_TOKEN=token)
    command = [sys.executable, "-m", "samflow.cli.main", "submit", "--address", address, "--no-pip", *job]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _uris(dst: Path, table: str) -> list[str]:
    folder = dst / table
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    return sorted(uri for f in files for uri in pq.read_table(f, columns=["uri"]).column("uri").to_pylist())


@pytest.mark.slow
@pytest.mark.parametrize("num_cpus", [1, 2])
def test_submitted_run_finishes_exactly_on_a_small_cluster(num_cpus, small_dataset, tmp_path):
    dst = tmp_path / "out"
    with running_head(num_cpus=num_cpus) as head:
        done = _submit(head.address, head.token,
                       ["annotate", str(small_dataset), "--out", str(dst), "--profile", "tiny"], timeout=420)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    inputs = sorted(str(p) for p in small_dataset.iterdir())
    images, errors = _uris(dst, "images"), _uris(dst, "errors")
    assert errors == [str(small_dataset / "broken.jpg")]
    assert sorted(images + errors) == inputs  # every input is exactly one images or errors row
    assert len(set(images)) == IMAGES


@pytest.mark.slow
def test_gpu_stage_on_a_gpu_less_cluster_fails_fast_with_the_fix(small_dataset, tmp_path):
    dst = tmp_path / "out"
    job = ["annotate", str(small_dataset), "--out", str(dst), "--profile", "tiny",
           "--set", "stages.segment.num_gpus=1", "--set", "ray.cpu_fallback=false",
           "--set", "ray.resource_wait_s=600"]
    with running_head(num_cpus=2) as head:
        started = time.monotonic()
        done = _submit(head.address, head.token, job, timeout=300)
        elapsed = time.monotonic() - started
    print(f"GPU-less failure after {elapsed:.0f} s")
    logs = done.stdout + done.stderr
    assert done.returncode == 1, logs[-4000:]
    # The CLI's own last word: one line naming the short resource and the fix.
    assert "samflow annotate: not enough GPU for stage(s) segment" in logs
    assert "ray.cpu_fallback=true" in logs
    # Nothing could have been placed: no autoscaler, so no 600 s wait either.
    assert elapsed < 240
    assert not (dst / "images").exists()
