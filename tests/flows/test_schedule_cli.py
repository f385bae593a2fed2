"""`samflow schedule` on one machine, as the README runs it (no PREFECT_API_URL, relative paths):
its schedules create and start runs by themselves. Nothing is triggered by hand: the test waits
for the crons' ticks, then reads the runs back from the Prefect server the command started."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from samflow.config import StorageConfig
from samflow.scenes.sample import write_sample_dataset
from samflow.store.catalog import Catalog
from tests.helpers.cli_process import hears_ctrl_c

ROOT = Path(__file__).resolve().parents[2]
MINUTE = 60.0


def _wait_for(condition: Callable[[], Any], what: str, log: Path, timeout_s: float = 10 * MINUTE) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; samflow schedule said:\n{log.read_text()[-4000:]}")


def _images_into(src: Path, prefix: str, seed: int, scratch: Path) -> list[Path]:
    """Two sample images copied into ``src`` (only the pictures, not the sample's ground truth)."""
    src.mkdir(exist_ok=True)
    written = write_sample_dataset(scratch, n_synthetic=2, seed=seed, include_skimage=False)
    return [Path(shutil.copy(path, src / f"{prefix}{path.name}")) for path in written]


def _manifests(out: Path) -> list[dict]:
    runs = Catalog(str(out), StorageConfig()).run_manifests()
    return sorted(runs, key=lambda m: m["started_at"])


def _flow_runs(api_url: str, flow_name: str) -> list:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with SyncPrefectClient(api_url) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
    return sorted((r for r in runs if r.state is not None and r.state.is_completed()), key=lambda r: r.start_time)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about three minutes on an idle machine: it waits for the crons' ticks
def test_schedule_starts_annotate_and_index_runs_on_their_crons(tmp_path, ray_cluster):
    first = _images_into(tmp_path / "in", "", seed=4, scratch=tmp_path / "first")
    log = tmp_path / "schedule.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "RAY_ADDRESS": ray_cluster.address, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the README's single machine: no Prefect server configured
    with open(log, "w") as sink:
        schedule = subprocess.Popen(
            [sys.executable, "-m", "samflow.cli.main", "schedule", "in", "--out", "out", "--profile", "tiny",
             "--cron", "* * * * *", "--index-cron", "* * * * *"],
            cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=hears_ctrl_c)
    try:
        api_url = _wait_for(lambda: (m := re.search(r"Prefect server (\S+)", log.read_text())) and m.group(1),
                            "the Prefect server", log)
        out = tmp_path / "out"
        _wait_for(lambda: _manifests(out), "the first scheduled annotate run", log)
        # New files after the first run: the next run processes only them.
        later = _images_into(tmp_path / "in", "later-", seed=5, scratch=tmp_path / "later")
        runs = _wait_for(lambda: len(m := _manifests(out)) >= 2 and m, "a second annotate run", log)
        images = len(first) + len(later)
        _wait_for(lambda: (m := _index_manifest(out)) and m["count"] == images, "an index run over both", log)
        annotate_runs = _flow_runs(api_url, "annotate-dataset")
        index_runs = _flow_runs(api_url, "index-dataset")
    finally:
        os.killpg(schedule.pid, signal.SIGINT)  # Ctrl-C
        schedule.wait(timeout=120)

    assert [m["counts"]["inputs"] for m in runs[:2]] == [len(first), len(later)]
    assert runs[1]["counts"]["already_done"] == len(first)
    for flow_runs in (annotate_runs, index_runs):
        assert len(flow_runs) >= 2
        previous_end = None
        for run in flow_runs:
            assert run.created_by.type == "SCHEDULE" and run.auto_scheduled  # the cron made it
            # On time: within the minute it was due, or, when the one before ran past its tick,
            # within a minute of that one's end (polling and a process start take seconds).
            due = max(run.expected_start_time, previous_end) if previous_end else run.expected_start_time
            assert (run.start_time - due).total_seconds() < MINUTE, (run.name, run.expected_start_time, due)
            previous_end = run.end_time
    for before, after in itertools.pairwise(annotate_runs):
        assert before.end_time <= after.start_time  # runs never overlap
    assert schedule.returncode == 0, log.read_text()[-3000:]


def _index_manifest(out: Path) -> dict | None:
    import json

    path = out / "_index" / "image" / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None
