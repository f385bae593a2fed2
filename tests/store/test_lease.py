"""One run per output: the lease on DST refuses a second run, lets a waiting one in when the first
ends, and expires when its holder is killed so the next run takes over and completes. Of runs
racing for it exactly one wins; a run that lost it stops before its next commit."""

from __future__ import annotations

import json
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
    first = Lease(dst, StorageConfig(), ttl_s=30)
    second = Lease(dst, StorageConfig(), ttl_s=30)
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
    first = Lease(dst, StorageConfig(), ttl_s=30)
    first.acquire()
    threading.Timer(1.5, first.release).start()
    second = Lease(dst, StorageConfig(), ttl_s=30)
    started = time.monotonic()
    second.acquire(wait=True, poll_s=0.2, timeout_s=60)
    assert time.monotonic() - started >= 1.0  # it waited for the release, not past it
    assert second.read().owner == second.owner
    second.release()


def test_lease_is_renewed_while_held(tmp_path):
    lease = Lease(str(tmp_path / "out"), StorageConfig(), ttl_s=1.5)
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
    with Lease(dst, StorageConfig(), ttl_s=60) as holder:
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
Lease(sys.argv[1], StorageConfig(), ttl_s=float(sys.argv[2]), owner=sys.argv[3] or None).acquire()
print("held", flush=True)
time.sleep(600)
"""


def start_holder(dst: str, ttl_s: float, owner: str = "") -> subprocess.Popen:
    """A process that takes DST's lease and renews it until the test kills it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, dst, str(ttl_s), owner], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def kill(holder: subprocess.Popen) -> None:
    os.kill(holder.pid, signal.SIGKILL)  # no goodbye
    holder.wait()


def killed_holder(dst: str, ttl_s: float, owner: str = "") -> None:
    """A process that takes DST's lease, renews it, and is SIGKILLed (no goodbye)."""
    kill(start_holder(dst, ttl_s, owner))


def test_killed_holder_on_this_machine_is_taken_over_at_once(tmp_path):
    dst = str(tmp_path / "out")
    killed_holder(dst, ttl_s=300)
    stale = Lease(dst, StorageConfig()).read()
    assert stale is not None and stale.live  # still within its TTL ...
    successor = Lease(dst, StorageConfig(), ttl_s=30)
    successor.acquire()  # ... but its process is gone: no need to wait
    assert successor.read().owner == successor.owner
    successor.release()


@pytest.mark.slow
def test_killed_run_lease_expires_and_next_run_takes_over(tmp_path, ray_cluster):
    src = tmp_path / "in"
    written = write_sample_dataset(src, n_synthetic=2, seed=2, include_skimage=False)
    dst = str(tmp_path / "out")
    ttl = 10.0  # the holder's: the run waits this long after the kill, at most (it renews every ttl/3)
    # A run on another machine (its owner names another host): only the expiry can free DST. It
    # holds the lease, renewing it, until the next run is waiting for it; then it is killed.
    holder = start_holder(dst, ttl, owner="node-b:4242:feedbeef")
    log = tmp_path / "annotate.err"
    try:
        with open(log, "w") as err:
            run = subprocess.Popen([sys.executable, "-m", "samflow.cli.main", "annotate", str(src), "--out", dst,
                                    "--profile", "tiny", "--wait", "--set", "stages.embed.enabled=false",
                                    "--set", "output.lease_ttl_s=60"],
                                   stdout=subprocess.PIPE, stderr=err, text=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray_cluster.address})
        deadline = time.monotonic() + 600
        while "waiting: output" not in log.read_text() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        kill(holder)
    if "waiting: output" not in log.read_text():  # it must be refused while the holder lives
        run.kill()
        run.wait()
        raise AssertionError(f"the run never waited for the lease:\n{log.read_text()[-3000:]}")
    killed = Lease(dst, StorageConfig()).read()
    assert killed is not None and killed.owner == "node-b:4242:feedbeef"  # no goodbye: still there
    stdout, _ = run.communicate(timeout=600)
    stderr = log.read_text()
    assert run.returncode == 0, stderr[-3000:]
    assert "node-b:4242:feedbeef" in stderr  # it waited for that run's lease to expire
    counts = summary_of(stdout)["counts"]
    assert counts["inputs"] == len(written) == counts["images"] + counts["errors"]
    assert Lease(dst, StorageConfig()).read() is None  # released at the end


RACER = """
import sys, time
from samflow.config import StorageConfig
from samflow.store.lease import Lease
lease = Lease(sys.argv[1], StorageConfig(), ttl_s=60)
lease.read()  # the storage client is set up before the start, so the racers act together
print("ready", flush=True)
time.sleep(max(0.0, float(sys.stdin.readline()) - time.time()))
print("held" if lease.try_acquire() is None else "refused", flush=True)
sys.stdin.readline()  # a winner keeps its process (and so its lease) until the test is done
"""


def race(dst: str, racers: int) -> list[str]:
    """``racers`` processes try to take DST's lease at the same instant; what each got."""
    procs = [subprocess.Popen([sys.executable, "-c", RACER, dst], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(racers)]
    assert [proc.stdout.readline().strip() for proc in procs] == ["ready"] * racers
    start = time.time() + 0.5
    for proc in procs:
        proc.stdin.write(f"{start}\n")
        proc.stdin.flush()
    outcomes = [proc.stdout.readline().strip() for proc in procs]
    for proc in procs:
        proc.communicate("\n", timeout=60)
    return outcomes


def write_lease(dst: str, owner: str, expires_at: float) -> None:
    from samflow.store.lease import LEASE_FILE
    from samflow.store.storage import filesystem, put_whole

    fs, root = filesystem(dst, StorageConfig())
    payload = {"owner": owner, "expires_at": expires_at, "acquired_at": expires_at - 60, "ttl_s": 60}
    put_whole(fs, f"{root}/{LEASE_FILE}", json.dumps(payload).encode())


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("before", ["free", "expired"])
def test_racing_runs_exactly_one_takes_the_lease(where, before, tmp_path, request):
    dst = f"{request.getfixturevalue('s3_bucket')}/race-{before}" if where == "s3" else str(tmp_path / "out")
    if before == "expired":  # a run on another machine that stopped renewing: every racer may take it over
        write_lease(dst, "node-b:4242:feedbeef", time.time() - 1)
    outcomes = race(dst, racers=4)
    assert sorted(outcomes) == ["held", "refused", "refused", "refused"], outcomes
    holder = Lease(dst, StorageConfig()).read()
    assert holder is not None and holder.owner != "node-b:4242:feedbeef"


PAUSED_HOLDER = """
import sys
from samflow.config import StorageConfig
from samflow.store.lease import Lease, LeaseLost
lease = Lease(sys.argv[1], StorageConfig(), ttl_s=1.0)
lease.acquire()
print("held", flush=True)
sys.stdin.readline()  # resumed after the test took the lease over
try:
    lease.check()
    print("still held", flush=True)
except LeaseLost as exc:
    print(f"lost: {exc}", flush=True)
lease.release()
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_paused_holder_learns_it_lost_the_lease_and_leaves_the_new_holders(where, tmp_path, request):
    dst = f"{request.getfixturevalue('s3_bucket')}/paused" if where == "s3" else str(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", PAUSED_HOLDER, dst], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGSTOP)  # a paused machine: its renewals stop, its process lives
    successor = Lease(dst, StorageConfig(), ttl_s=60)
    successor.acquire(wait=True, poll_s=0.2, timeout_s=30)  # once the paused holder's lease expires
    os.kill(holder.pid, signal.SIGCONT)
    said = holder.communicate("\n", timeout=60)[0].strip().splitlines()
    assert said[-1].startswith("lost: this run lost the lease") and successor.owner in said[-1], said
    assert "stopped before its next commit" in said[-1]
    try:
        assert Lease(dst, StorageConfig()).read().owner == successor.owner  # its release left ours alone
        successor.check()  # and the new holder holds it
    finally:
        successor.release()
    assert successor.read() is None


@pytest.mark.slow
def test_a_cli_run_that_lost_its_lease_stops_before_its_next_commit(tmp_path, prefect_server, ray_cluster):
    from prefect.settings import PREFECT_API_URL

    src = tmp_path / "in"
    write_sample_dataset(src, n_synthetic=4, seed=3, include_skimage=False)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "RAY_ADDRESS": ray_cluster.address}  # the session's cluster: only the driver pauses
    # Relative SRC and DST, typed in their folder: the joined cluster's workers stage under the same DST.
    run = subprocess.Popen([sys.executable, "-m", "samflow.cli.main", "annotate", "in", "--out", "out",
                            "--profile", "tiny", "--set", "output.shard_rows=1", "--set", "stages.embed.enabled=false",
                            "--set", "output.lease_ttl_s=2"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("_staging/**/*.parquet")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the first shard is staged: the driver commits it next
    assert run.poll() is None, run.communicate()[1][-3000:]
    os.kill(run.pid, signal.SIGSTOP)  # the driver pauses (a stalled machine): its lease lapses
    successor = Lease(str(out), StorageConfig(), ttl_s=60)
    successor.acquire(wait=True, poll_s=0.2, timeout_s=30)
    try:
        committed = sorted(p.name for p in out.glob("_commits/*.json"))
        os.kill(run.pid, signal.SIGCONT)
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 2, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        assert "lost the lease on output" in last and successor.owner in last, stderr[-3000:]
        assert sorted(p.name for p in out.glob("_commits/*.json")) == committed  # nothing committed since
        assert not list(out.glob("_runs/*.json"))  # and no run manifest
        assert successor.read().owner == successor.owner
    finally:
        successor.release()
