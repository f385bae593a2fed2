"""Every bench runs in CI: `python bench/NAME.py --smoke` for each bench/*.py script (found by
glob, so a new bench is covered without editing this file) must exit 0 and end with the result
line docs/architecture.md describes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HELPERS = {"__init__.py", "common.py"}  # plumbing the benches import, not benches
BENCHES = sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.name not in HELPERS)


def test_benches_are_found():
    assert {"pipeline", "overhead", "stages"} <= set(BENCHES)


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHES)
def test_bench_smoke_ends_with_its_result_line(name: str):
    # A short Ray temp dir of its own: Ray's socket paths under pytest's long tmp_path can pass
    # the 107-byte AF_UNIX limit.
    ray_tmp = tempfile.mkdtemp(prefix="sfb-")
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_TMPDIR=ray_tmp)
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "bench" / f"{name}.py"), "--smoke"],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, f"bench/{name}.py --smoke failed:\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"bench/{name}.py printed nothing"
    payload = json.loads(lines[-1])
    assert payload["bench"] == name and payload["device"]
    assert payload["results"], "a bench reports at least one figure"
    for row in payload["results"]:
        assert set(row) >= {"case", "metric", "value", "unit"}, row
        assert isinstance(row["case"], str) and isinstance(row["metric"], str) and isinstance(row["unit"], str)
