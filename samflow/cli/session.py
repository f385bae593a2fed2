"""One pipeline command's session on this machine: the output's lease held, a progress display,
quiet logs, and Ray shut down afterwards when the command started it."""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from samflow.cli import logs


@contextlib.contextmanager
def pipeline_session(name: str, verbose: int, lease: Any, wait: bool, ray_config: Any = None,
                     flow_module: str | None = None) -> Iterator[Any]:
    """Take ``lease`` (``wait``: for another run to finish, else refuse at once), then yield a
    :class:`RunProgress` for the run; release the lease whatever happens. Ray starts
    (``ray_config``) in a thread while Prefect's temporary server (when none is configured) starts
    and ``flow_module`` is imported, so that the three overlap."""
    from samflow.cli.progress import RunProgress
    from samflow.flows.local_server import start_temporary_server_early

    lease.acquire(wait=wait)
    try:
        logs.quiet_warnings(verbose)
        # The server first: its process starts up while Ray starts and this one imports Ray Data
        # and the flow (Ray's processes started before it would slow its start down more).
        prefect_ready = start_temporary_server_early()
        # Ray's processes inherit the log redirect, and Ray stops inside it, so their C++ start-up
        # and shutdown lines go to the log file.
        with logs.native_stderr_to_file(verbose, name):
            was_up = _ray_is_up()
            ray_ready = _start_ray_early(ray_config, verbose)
            try:
                logs.quiet_ray_data(verbose)
                with RunProgress() as progress, stopping_ray_started_here(was_up):
                    if flow_module is not None:
                        importlib.import_module(flow_module)
                    ray_ready()
                    prefect_ready()
                    yield progress
            finally:
                ray_ready.wait()
                if not was_up and _ray_is_up():  # a failure before the run's block: Ray is ours
                    sys.modules["ray"].shutdown()
                ray_ready.close()
    finally:
        lease.release()


class _RayStart:
    """``ensure_ray(config)`` in a thread of its own, started now; calling it waits for Ray and
    raises what starting it raised. The thread lives until :meth:`close`: Ray's local processes
    are started with the death signal of the thread that started them (Linux ``PR_SET_PDEATHSIG``
    follows the parent thread), so it must outlive the session's Ray."""

    def __init__(self, config: Any, verbose: int) -> None:
        self._failure: list[BaseException] = []
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if config is None:
            self._ready.set()
            return
        # Ray core only in the thread (Ray Data and the flow import in the caller's thread); Ray
        # sets its SIGTERM handler only from the main thread: the same one is set here.
        import ray  # noqa: F401 - imported here, not in the thread beside other imports

        from samflow.pipeline.ray_start import ensure_ray

        if not verbose:
            logs.quiet_ray_worker_logs()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _exit_on_sigterm)

        def start() -> None:
            try:
                with _no_sigterm_warning():
                    ensure_ray(config)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._failure.append(exc)
            finally:
                self._ready.set()
            self._closing.wait()

        self._thread = threading.Thread(target=start, name="ray-start", daemon=True)
        self._thread.start()

    def __call__(self) -> None:
        self._ready.wait()
        if self._failure:
            failure, self._failure = self._failure[0], []
            raise failure

    def wait(self) -> None:
        """Until Ray is up or starting it failed (what failed is not raised)."""
        self._ready.wait()

    def close(self) -> None:
        """Let the thread end (after Ray's shutdown, or at exit)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join()


def _start_ray_early(config: Any, verbose: int) -> _RayStart:
    return _RayStart(config, verbose)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """Ray's own driver handler (ray.init sets it when called from the main thread)."""
    sys.exit(signum)


class _SigtermWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


@contextlib.contextmanager
def _no_sigterm_warning() -> Iterator[None]:
    """Ray warns that it set no SIGTERM handler from a thread; the caller set the same one."""
    logger = logging.getLogger("ray._private.worker")
    quiet = _SigtermWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@contextlib.contextmanager
def stopping_ray_started_here(was_up: bool | None = None) -> Iterator[None]:
    """Shut Ray down at the end if the block started it (a joined or earlier Ray stays up);
    ``was_up``: whether Ray was up before the block's caller began starting it."""
    was_up = _ray_is_up() if was_up is None else was_up
    try:
        yield
    finally:
        if not was_up and _ray_is_up():
            sys.modules["ray"].shutdown()


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
