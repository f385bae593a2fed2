"""What the terminal shows: samflow's own warnings by default, everything with ``-v``.

Quiet by default means: no HTTP request line per Prefect API call, no Ray Data operator dumps or
progress logs, no Ray start-up chatter, no worker output forwarded to the driver, no library
deprecation warnings. All of it still goes to the usual files (Ray's session logs; Prefect's API
holds the flow's logs), and ``-v`` brings it back to the terminal (``-vv`` adds debug).

Some of these switches are environment variables the libraries read when they are imported (or
pass on to Ray's worker processes): :func:`console` must be entered before Prefect or Ray is imported,
and only sets a variable the user has not set.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

# Library loggers that speak once per request or per tick: WARNING unless -v.
CHATTY_LOGGERS = ("httpx", "httpcore", "prefect", "ray", "ray.data", "botocore", "s3fs", "urllib3")

_QUIET_ENV = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_LOGGER_LEVEL": "error",
    "RAY_LOG_TO_DRIVER": "0",
    # Not RAY_BACKEND_LOG_LEVEL: setting it makes Ray's C++ core print "logging.cc: Set ray log
    # level from environment variable ..." on stderr; its C++ logs go to files anyway.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}


@contextlib.contextmanager
def console(verbose: int) -> Iterator[None]:
    """Logging for one CLI command: ``verbose`` 0 = quiet, 1 = INFO from everything, 2 = DEBUG.
    What it changes (environment, logger levels, warning filters) is put back on exit, so an
    in-process caller (a test, a notebook) keeps its own settings."""
    saved_env = dict(os.environ)
    root = logging.getLogger()
    saved_levels = {name: logging.getLogger(name).level for name in ("", *CHATTY_LOGGERS)}
    saved_worker_logs = _ray_worker_logs()
    with warnings.catch_warnings():
        _configure(verbose)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
            root.setLevel(saved_levels[""])
            _set_ray_worker_logs(True if saved_worker_logs is None else saved_worker_logs)


def report_console(file: IO[str] | None = None, stderr: bool = False) -> Console:
    """A rich console for tables and summaries: the terminal's width, or, piped or captured, 200
    columns (rich's 80 would wrap whole paths, run ids and model names)."""
    from rich.console import Console

    console = Console(file=file, stderr=stderr)
    return console if console.is_terminal else Console(file=file, stderr=stderr, width=200)


def _configure(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # no-op if set up
    logging.getLogger().setLevel(level)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here anyway
    # The embedded Prefect server starts in seconds, unless the machine is busy: wait for it
    # rather than fail the run (Prefect's default gives up after 20 s).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if verbose:
        return
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _ignore_library_warnings()


def _ignore_library_warnings() -> None:
    # Ray adds its own filter for its deprecations when imported: run again after importing it.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


# The driver prints what the raylet pushes to it ("(raylet) A worker died ...", "(raylet)
# WARNING: N PYTHON worker processes have been started ...") on stdout whatever log_to_driver
# says; the only switch is the module flag Ray's debugger (ray.util.rpdb) uses for the same.
# Ray's session logs keep these messages (logs/events/event_RAYLET.log).
_RAY_WORKER_MODULE = "ray._private.worker"
_RAY_WORKER_LOGS_FLAG = "_worker_logs_enabled"


def _ray_worker_logs() -> bool | None:
    """Whether Ray's driver prints worker and raylet lines; None while Ray is not imported."""
    module = sys.modules.get(_RAY_WORKER_MODULE)
    return getattr(module, _RAY_WORKER_LOGS_FLAG, None) if module is not None else None


def _set_ray_worker_logs(enabled: bool) -> None:
    module = sys.modules.get(_RAY_WORKER_MODULE)
    if module is not None and hasattr(module, _RAY_WORKER_LOGS_FLAG):
        setattr(module, _RAY_WORKER_LOGS_FLAG, enabled)


def quiet_warnings(verbose: int) -> None:
    """Quiet mode: libraries' deprecation and future warnings stay off the terminal."""
    if not verbose:
        _ignore_library_warnings()


def quiet_ray_data(verbose: int) -> None:
    """After Ray Data is imported: no progress bars or periodic operator dumps on the terminal
    (the progress display replaces them), no "(raylet)" / "(pid=...)" lines printed by the
    driver; Ray's own log files keep everything."""
    if verbose:
        return
    from ray.data import DataContext

    _ignore_library_warnings()
    _set_ray_worker_logs(False)

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.ERROR)


@contextlib.contextmanager
def native_stderr_to_file(verbose: int, name: str) -> Iterator[Path | None]:
    """Quiet mode: what native code writes to file descriptor 2 (Ray's C++ core in this process:
    "[... E 123 123] core_worker.cc: ...", gRPC / absl start-up lines, child processes that
    inherit it) goes to a log file in the temp folder instead of the terminal; Python's
    ``sys.stderr`` (samflow's progress, summary, warnings and errors) keeps the terminal.
    Yields the file's path (None with ``-v``: everything stays on the terminal). An empty
    file is removed on exit."""
    if verbose:
        yield None
        return
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = Path(tempfile.gettempdir()) / f"samflow-{name}-{stamp}-{os.getpid()}.native.log"
    sys.stderr.flush()
    try:
        terminal_fd = os.dup(2)
    except OSError:  # no fd 2 at all (a daemon): nothing can reach a terminal anyway
        yield None
        return
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved_stderr = sys.stderr
    terminal = open(terminal_fd, "w", buffering=1, encoding=getattr(saved_stderr, "encoding", None) or "utf-8",
                    errors="backslashreplace", closefd=False)
    moved = _point_stream_handlers(saved_stderr, terminal)
    sys.stderr = terminal
    os.dup2(log_fd, 2)
    try:
        yield path
    finally:
        terminal.flush()
        os.dup2(terminal_fd, 2)
        sys.stderr = saved_stderr
        for handler in moved:
            handler.setStream(saved_stderr)
        terminal.close()
        os.close(terminal_fd)
        os.close(log_fd)
        if path.stat().st_size == 0:
            path.unlink()


def _point_stream_handlers(old, new) -> list[logging.StreamHandler]:  # noqa: ANN001
    """The root logger's console handlers (samflow's own warnings propagate there) write to
    ``new``; library handlers keep the old stream, so their output lands in the log file."""
    moved = []
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream is old:
            handler.setStream(new)
            moved.append(handler)
    return moved
