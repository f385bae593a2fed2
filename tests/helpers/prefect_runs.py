"""Running a Prefect deployment as a scheduler would: a flow run created from the deployment and
executed by Prefect's own `prefect flow-run execute` (what a worker or `samflow schedule` runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def trigger_deployment(name: str, timeout_s: int = 900, env: dict[str, str] | None = None) -> Any:
    """Create a run of deployment ``name`` and execute it here (``env``: more environment for
    it); it must complete. Returns the flow run's id."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    flow_run = run_deployment(name, timeout=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(), **(env or {})}
    done = subprocess.run([str(Path(sys.executable).parent / "prefect"), "flow-run", "execute", str(flow_run.id)],
                          env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.is_completed(), f"{state.name}: {state.message}\n{(done.stdout + done.stderr)[-4000:]}"
    return flow_run.id


def run_logs_and_artifacts(flow_run_id: Any) -> tuple[list[str], dict[str, str]]:
    """The run's log messages (oldest first) and its artifacts' data by key, read back from the
    Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return [log.message for log in sorted(logs, key=lambda log: log.timestamp)], {a.key: a.data for a in artifacts}
