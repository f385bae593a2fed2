"""``samflow serve DST --port P`` as a user runs it: a subprocess joined to the session's Ray
cluster, answering real HTTP, stopped with Ctrl-C (SIGINT) and exiting cleanly. Its own module
so that no other Serve app holds the cluster's HTTP proxy meanwhile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from samflow.cli.main import main
from samflow.store.catalog import RUNS
from tests.helpers.cli_process import hears_ctrl_c
from tests.helpers.index_data import clustered, write_image_shard
from tests.helpers.ports import free_port

TOKEN = "cli-token-0123456789"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def indexed_dst(tmp_path):
    """Committed image vectors of tiny CLIP's width, a run manifest naming tiny CLIP (text
    queries go through it), and the built image index."""
    from samflow.models.loading.registry import load_model

    dim = load_model("clip", "tiny://clip").dim
    dst = tmp_path / "run"
    write_image_shard(str(dst), "a", clustered(12, dim, seed=4), first=0)
    (dst / RUNS).mkdir()
    (dst / RUNS / "run.json").write_text(json.dumps({"run_id": "run", "models": {"embed": {"model": "tiny://clip"}}}))
    assert main(["index", "build", str(dst)]) == 0
    return str(dst)


def _wait_healthy(base: str, process: subprocess.Popen, timeout_s: float = 180) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            response = httpx.get(f"{base}/healthz", timeout=5)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"samflow serve did not answer /healthz within {timeout_s} s")


def test_samflow_serve_answers_http_and_stops_cleanly_on_ctrl_c(ray_cluster, indexed_dst):
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "SAMFLOW_SERVE_TOKEN": TOKEN,
           "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "samflow.cli.main", "serve", indexed_dst, "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=hears_ctrl_c,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        health = _wait_healthy(base, process).json()
        assert health["status"] == "ok" and health["indexes"] == {"image": 12}
        assert httpx.post(f"{base}/search", json={"text": "a cat"}, timeout=60).status_code == 401
        reply = httpx.post(f"{base}/search", json={"text": "a cat", "k": 3}, timeout=60,
                           headers={"Authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 200, reply.text
        hits = reply.json()["results"]
        assert len(hits) == 3 and all(h["uri"].startswith("s3://src/img-") for h in hits)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            raise AssertionError(f"samflow serve ignored Ctrl-C:\n{output}") from None
    assert process.returncode == 0, output
    assert f"samflow serve: http://127.0.0.1:{port}" in output and "bearer token required" in output
    assert "Traceback" not in output
    assert _proxy_gone(base), "the HTTP proxy outlived samflow serve"


def _proxy_gone(base: str, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/healthz", timeout=5)
        except httpx.TransportError:
            return True
        time.sleep(0.5)
    return False
