"""The Prefect servers samflow's commands run against when no server is configured.

``samflow annotate`` and ``synth`` start Prefect's temporary server early, alongside Ray's start
(:func:`start_temporary_server_early`). ``samflow schedule`` serves against the configured server
(``PREFECT_API_URL``) or, without one, a server of its own with the scheduler on.

A Prefect client with no API URL starts a temporary server that runs no scheduler service
(Prefect's own runner warns: "Cannot schedule flows on an ephemeral server"), so a deployment
served against it never gets a scheduled run. Instead ``prefect server start`` (the API with its
services, the scheduler and late-run marking among them; no UI) runs on a free local port for as
long as ``samflow schedule`` does. Its database is Prefect's usual one (under ``PREFECT_HOME``), so
the run history outlives a restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from samflow.errors import UserError

START_TIMEOUT_S = 180.0


@contextlib.contextmanager
def scheduling_server(timeout_s: float = START_TIMEOUT_S) -> Iterator[tuple[str, bool]]:
    """``(api_url, started_here)``: the configured server, or one started here until the block ends.
    Inside the block Prefect's settings (and this process's environment, which flow runs inherit)
    name that server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured, False
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = Path(tempfile.gettempdir()) / f"samflow-prefect-server-{port}.log"
    with open(log_path, "wb") as log:
        # Its own session: a Ctrl-C meant for `samflow schedule` must not stop the server before
        # the runner has said goodbye to it.
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--no-ui", "--scheduler", "--late-runs"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        _wait_healthy(url, server, log_path, timeout_s)
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url, True
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
    finally:
        _stop(server)
    log_path.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UserError(f"the Prefect server for the schedule exited at start: {_last_line(log_path)}; "
                            "set PREFECT_API_URL to a running Prefect server instead")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    _stop(server)
    raise UserError(f"the Prefect server for the schedule did not answer within {timeout_s:.0f} s "
                    f"(its log: {log_path}); set PREFECT_API_URL to a running Prefect server instead")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and whatever it started (it leads its own process group)."""
    for signal_number, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, None)):
        if server.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal_number)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=wait_s)


def start_temporary_server_early() -> Callable[[], None]:
    """Start Prefect's temporary server in a thread now, if no server is configured, and return
    the call that waits for it. The server is a process of its own, so its start-up overlaps with
    the caller's (imports, Ray's start) instead of coming after them; the flow then finds it
    running and uses it, as it would have started it itself."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return lambda: None
    from prefect.server.api.server import SubprocessASGIServer

    failure: list[BaseException] = []

    def start() -> None:
        try:
            SubprocessASGIServer().start()
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    starting = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    starting.start()

    def wait() -> None:
        starting.join()
        if failure:
            raise failure[0]

    return wait
