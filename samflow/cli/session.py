"""One pipeline command's session on this machine: the output's lease held, a progress display,
quiet logs, and Ray shut down afterwards when the command started it."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from typing import Any

from samflow.cli import logs


@contextlib.contextmanager
def pipeline_session(name: str, verbose: int, lease: Any, wait: bool, ray_config: Any = None,
                     flow_module: str | None = None) -> Iterator[Any]:
    """Take ``lease`` (``wait``: for another run to finish, else refuse at once), then yield a
    :class:`RunProgress` for the run; release the lease whatever happens. While Prefect's temporary
    server (when none is configured) starts, ``flow_module`` is imported and Ray started
    (``ray_config``), so that the three overlap."""
    from samflow.cli.progress import RunProgress
    from samflow.cli.prefect_server import temporary_server

    lease.acquire(wait=wait)
    try:
        # The server first: its process starts up while this one imports Ray Data and the flow.
        logs.quiet_warnings(verbose)
        with temporary_server() as prefect_ready:
            logs.quiet_ray_data(verbose)
            # Ray stops inside the log redirect, so its C++ shutdown lines go to the log file.
            with logs.native_stderr_to_file(verbose, name), RunProgress() as progress, stopping_ray_started_here():
                if flow_module is not None:
                    importlib.import_module(flow_module)
                if ray_config is not None:
                    from samflow.pipeline.graph import ensure_ray

                    ensure_ray(ray_config)
                prefect_ready()
                yield progress
    finally:
        lease.release()


@contextlib.contextmanager
def stopping_ray_started_here() -> Iterator[None]:
    """Shut Ray down at the end if the block started it (a joined or earlier Ray stays up)."""
    was_up = _ray_is_up()
    try:
        yield
    finally:
        if not was_up and _ray_is_up():
            sys.modules["ray"].shutdown()


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
