"""A private `ray start --head` with token auth, in its own temp dir and ports (never RAY_ADDRESS)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from samflow.cli import submit
from tests.helpers.ports import free_ports


@dataclass(frozen=True)
class RayHead:
    address: str
    token: str


def _processes_of(temp_dir: str) -> list[psutil.Process]:
    # Every process of a Ray node carries its temp / session dir on the command line.
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _wait_for_jobs_api(address: str, token: str, starter: subprocess.Popen, log: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 90
    while True:
        if starter.poll() is not None:
            raise RuntimeError(f"ray start exited {starter.returncode}:\n{log.read_text()[-3000:]}")
        try:
            JobSubmissionClient(address, headers=submit.auth_headers(token)).list_jobs()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _stop_head(starter: subprocess.Popen, temp_dir: str) -> None:
    # `ray start --block` tears its node down on SIGTERM; whatever is left of *this* node (found
    # by its private temp dir) is killed by pid. Never `ray stop`: it kills every Ray on the host.
    if starter.poll() is None:
        starter.send_signal(signal.SIGTERM)
        try:
            starter.wait(timeout=20)
        except subprocess.TimeoutExpired:
            starter.kill()
    leftovers = _processes_of(temp_dir)
    for proc in leftovers:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(leftovers, timeout=10)
    for proc in alive:
        proc.kill()


@contextmanager
def running_head(num_cpus: int) -> Iterator[RayHead]:
    """A `ray start --head` with ``num_cpus`` CPUs, no GPU, token auth, in its own temp dir."""
    ray_bin = Path(sys.executable).with_name("ray")
    gcs, dashboard, client, agent = free_ports(4)
    token = secrets.token_hex(24)
    # Short path: Ray's unix sockets live under it and are limited to ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="sfray", dir="/tmp")
    # The head is a separate "cluster": it gets none of this session's AWS settings (the S3 test
    # server's dummy credentials among them), so anything AWS_* a job sees came with the job.
    env = {
        k: v for k, v in os.environ.items()
        if k not in {"RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"} and not k.startswith("AWS_")
    }
    env.update(
        RAY_AUTH_MODE="token",  # Ray 2.60's default for new clusters, explicit here
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        # The job's `python` is this venv's, as a cluster node's would be its image's.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    log = Path(temp_dir) / "ray-start.log"
    with log.open("w") as log_file:
        starter = subprocess.Popen(
            [str(ray_bin), "start", "--head", "--block", f"--port={gcs}",
             f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
             f"--dashboard-agent-listen-port={agent}", "--dashboard-host=127.0.0.1",
             f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=true",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_jobs_api(address, token, starter, log)
        yield RayHead(address=address, token=token)
    finally:
        _stop_head(starter, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


