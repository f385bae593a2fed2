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


def test_gpu_bench_command_is_the_one_documented():
    command = "PYTHONPATH=. python bench/gpu.py"
    source = (REPO / "bench" / "gpu.py").read_text()
    assert f'GPU_COMMAND = "{command}"' in source and f"    {command}  " in source
    assert f"`{command}`" in (REPO / "README.md").read_text()


@pytest.mark.slow
def test_gpu_bench_smoke_runs_with_the_gpu_machines_packages_alone():
    """bench/gpu.py is for a machine with only torch, transformers and pyarrow: run where nothing
    else imports (tests/helpers/bare_env.py), every section but Meta's comparison (its packages are
    missing there: skipped, with the reason) succeeds, and neither Ray nor Prefect is imported."""
    script = (
        "import runpy, sys\n"
        "import tests.helpers.bare_env\n"
        f"sys.path.insert(0, {str(REPO / 'bench')!r})\n"
        f"sys.argv = [{str(REPO / 'bench' / 'gpu.py')!r}, '--smoke']\n"
        f"runpy.run_path({str(REPO / 'bench' / 'gpu.py')!r}, run_name='__main__')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])
    assert payload["forbidden_modules_imported"] == []
    statuses = {name: section["status"] for name, section in payload["sections"].items()}
    assert statuses == {"peak": "ok", "encoders": "ok", "engine": "ok", "peers": "skipped", "concepts": "ok",
                        "tracker": "ok", "clip": "ok", "train": "ok"}, payload["sections"]
    assert "segment_anything" in payload["sections"]["peers"]["reason"]


def test_tree_cpu_splits_a_process_trees_cpu_by_group():
    """The CPU figures bench/overhead.py derives its streaming ceiling from: a command that spins
    0.6 CPU-s, then starts a child (marked as the model) that spins 1.0 CPU-s."""
    sys.path.insert(0, str(REPO / "bench"))
    from common import TreeCpu

    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
    child = spin.format(s=1.0)
    parent = spin.format(s=0.6) + f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}, 'EmbedStage'])\n"
    proc = subprocess.Popen([sys.executable, "-c", parent])
    with TreeCpu(proc.pid, model_marker="EmbedStage", interval_s=0.05) as cpu:
        proc.wait(timeout=60)
    totals = cpu.window(0.0, 1e9)
    assert 0.8 <= totals["model"] <= 1.3, totals
    assert 0.5 <= totals["command"] <= 1.0, totals
    assert cpu.window(0.0, 0.0)["model"] == 0.0  # the child did not exist yet
