"""Running a Prefect deployment as a scheduler would: a flow run created from the deployment and
executed by Prefect's own `prefect flow-run execute` (what a worker or `samflow schedule` runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def trigger_deployment(name: str, timeout_s: int = 900) -> None:
    """Create a run of deployment ``name`` and execute it here; it must complete."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    flow_run = run_deployment(name, timeout=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run([str(Path(sys.executable).parent / "prefect"), "flow-run", "execute", str(flow_run.id)],
                          env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run.id).state.is_completed()
