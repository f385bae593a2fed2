"""One run per output: the lease on DST refuses a second run, lets a waiting one in when the first
ends, and expires when its holder is killed so the next run takes over and completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from samflow.config import StorageConfig
from samflow.scenes.sample import write_sample_dataset
from samflow.store.lease import Lease, LeaseHeld
from tests.helpers.cli_summary import summary_of

ROOT = Path(__file__).resolve().parents[2]


def samflow(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "samflow.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=900)


def test_lease_on_s3_is_exclusive_and_released(s3_bucket):
    dst = f"{s3_bucket}/lease-out"
    first = Lease(dst, StorageConfig(), ttl_s=30, settle_s=0.1)
    second = Lease(dst, StorageConfig(), ttl_s=30, settle_s=0.1)
    first.acquire()
    try:
        with pytest.raises(LeaseHeld, match="in use by another run"):
            second.acquire()
        holder = second.read()
        assert holder is not None and holder.owner == first.owner and holder.live
    finally:
        first.release()
    assert first.read() is None
    second.acquire()
    second.release()


def test_waiting_run_gets_the_lease_when_the_first_releases(tmp_path):
    dst = str(tmp_path / "out")
    first = Lease(dst, StorageConfig(), ttl_s=30, settle_s=0.05)
    first.acquire()
    threading.Timer(1.5, first.release).start()
    second = Lease(dst, StorageConfig(), ttl_s=30, settle_s=0.05)
    started = time.monotonic()
    second.acquire(wait=True, poll_s=0.2, timeout_s=60)
    assert time.monotonic() - started >= 1.0  # it waited for the release, not past it
    assert second.read().owner == second.owner
    second.release()


def test_lease_is_renewed_while_held(tmp_path):
    lease = Lease(str(tmp_path / "out"), StorageConfig(), ttl_s=1.5, settle_s=0.01)
    lease.acquire()
    try:
        first_expiry = lease.read().expires_at
        time.sleep(2.5)  # longer than the TTL: alive only because it was renewed
        current = lease.read()
        assert current.live and current.expires_at > first_expiry
    finally:
        lease.release()


def test_second_cli_run_refuses_clearly(tmp_path):
    src = tmp_path / "in"
    write_sample_dataset(src, n_synthetic=1, seed=1, include_skimage=False)
    dst = str(tmp_path / "out")
    with Lease(dst, StorageConfig(), ttl_s=60, settle_s=0.05) as holder:
        done = samflow("annotate", str(src), "--out", dst, "--profile", "tiny")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another run" in lines[0] and holder.owner in lines[0]
    assert "--wait" in lines[0]
    assert not (tmp_path / "out" / "images").exists()  # it wrote nothing


HOLDER = """
import sys, time
from samflow.config import StorageConfig
from samflow.store.lease import Lease
Lease(sys.argv[1], StorageConfig(), ttl_s=float(sys.argv[2]), settle_s=0.05, owner=sys.argv[3] or None).acquire()
print("held", flush=True)
time.sleep(600)
"""


def killed_holder(dst: str, ttl_s: float, owner: str = "") -> None:
    """A process that takes DST's lease, renews it, and is SIGKILLed (no goodbye)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, dst, str(ttl_s), owner], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()


def test_killed_holder_on_this_machine_is_taken_over_at_once(tmp_path):
    dst = str(tmp_path / "out")
    killed_holder(dst, ttl_s=300)
    stale = Lease(dst, StorageConfig()).read()
    assert stale is not None and stale.live  # still within its TTL ...
    successor = Lease(dst, StorageConfig(), ttl_s=30, settle_s=0.05)
    successor.acquire()  # ... but its process is gone: no need to wait
    assert successor.read().owner == successor.owner
    successor.release()


@pytest.mark.slow
def test_killed_run_lease_expires_and_next_run_takes_over(tmp_path):
    src = tmp_path / "in"
    written = write_sample_dataset(src, n_synthetic=2, seed=2, include_skimage=False)
    dst = str(tmp_path / "out")
    ttl = 60.0
    # A run on another machine (its owner names another host): only the expiry can free DST.
    killed_holder(dst, ttl, owner="node-b:4242:feedbeef")
    killed = Lease(dst, StorageConfig()).read()
    assert killed is not None and killed.owner == "node-b:4242:feedbeef"  # no goodbye: still there
    assert killed.live  # (refusing a live lease: test_second_cli_run_refuses_clearly)

    done = samflow("annotate", str(src), "--out", dst, "--profile", "tiny", "--wait",
                   "--set", "stages.embed.enabled=false", "--set", f"output.lease_ttl_s={ttl}")
    assert done.returncode == 0, done.stderr
    assert "waiting: output" in done.stderr and "node-b:4242:feedbeef" in done.stderr  # it waited for expiry
    counts = summary_of(done.stdout)["counts"]
    assert counts["inputs"] == len(written) == counts["images"] + counts["errors"]
    assert Lease(dst, StorageConfig()).read() is None  # released at the end
