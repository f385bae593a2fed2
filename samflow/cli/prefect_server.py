"""The Prefect servers samflow's commands run against when no server is configured.

``samflow annotate`` and ``synth`` start Prefect's temporary server early, alongside Ray's start
(:func:`temporary_server`). ``samflow schedule`` serves against the configured server
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
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from samflow.errors import UserError

START_TIMEOUT_S = 180.0
_UVICORN_PORT_TAKEN = 3  # uvicorn's exit status when it cannot bind its port


@contextlib.contextmanager
def scheduling_server(timeout_s: float = START_TIMEOUT_S) -> Iterator[tuple[str, bool]]:
    """``(api_url, started_here)``: the configured server, or one started here until the block ends.
    Inside the block Prefect's settings (and this process's environment, which flow runs inherit)
    name that server."""
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured, False
        return
    # Its own session: a Ctrl-C meant for `samflow schedule` must not stop the server before
    # the runner has said goodbye to it.
    server = _LocalServer(["prefect", "server", "start", "--no-ui", "--scheduler", "--late-runs"],
                          "the Prefect server for the schedule", new_session=True)
    try:
        server.wait_healthy(timeout_s)
        with _pointing_at(server.url):
            yield server.url, True
    finally:
        server.stop()


@contextlib.contextmanager
def temporary_server() -> Iterator[Callable[[], None]]:
    """Prefect's temporary server, started now in a process of its own when no server is
    configured; yields the call that waits until it answers and points this process's Prefect
    settings at it, until the block ends. Without a server configured a Prefect client starts
    the same server (uvicorn on Prefect's app, UI off, marked ephemeral) once a flow begins; started
    here it comes up while this process imports Ray Data and the flow and starts Ray, and this
    process never imports Prefect's server package (2 s of CPU) to start it."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield lambda: None
        return
    # --app-dir: Prefect's own package wins over a folder of that name where the command runs.
    site_packages = Path(importlib.util.find_spec("prefect").origin).parent.parent
    server = _LocalServer(
        ["uvicorn", "--app-dir", str(site_packages), "--factory", "prefect.server.api.server:create_app",
         "--log-level", "error", "--lifespan", "on"],
        "Prefect's temporary server",
        env={"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
    )
    with contextlib.ExitStack() as pointing:

        def ready() -> None:
            # Prefect's own launcher counts only its sleeps against this setting (20 s by default),
            # so on a loaded machine it waits longer than it says; so does this, by wall clock.
            server.wait_healthy(max(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), 60.0))
            pointing.enter_context(_pointing_at(server.url))

        try:
            yield ready
        finally:
            pointing.close()
            server.stop()


@contextlib.contextmanager
def _pointing_at(url: str) -> Iterator[None]:
    """Prefect's settings, and this process's environment (which flow runs inherit), name ``url``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


class _LocalServer:
    """A Prefect API server process on a free local port, its output in a log file."""

    def __init__(self, module_args: list[str], name: str, env: dict[str, str] | None = None,
                 new_session: bool = False) -> None:
        self.name = name
        self._module_args, self._env, self._new_session = module_args, env or {}, new_session
        self._spawn()

    def _spawn(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self.log_path = Path(tempfile.gettempdir()) / f"samflow-prefect-server-{port}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *self._module_args, "--host", "127.0.0.1", "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=self._new_session,
                env={**os.environ, **self._env},
            )

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        port_retries = 3
        while time.monotonic() < deadline:
            status = self.process.poll()
            if status == _UVICORN_PORT_TAKEN and port_retries:
                # another process took the free port between our look and the server's bind
                port_retries -= 1
                self.log_path.unlink(missing_ok=True)
                self._spawn()
            elif status is not None:
                raise UserError(f"{self.name} exited at start: {_last_line(self.log_path)}; "
                                "set PREFECT_API_URL to a running Prefect server instead")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise UserError(f"{self.name} did not answer within {timeout_s:.0f} s "
                        f"(its log: {self.log_path}); set PREFECT_API_URL to a running Prefect server instead")

    def stop(self) -> None:
        """Stop the server and whatever it started (in its own session it leads a process group)."""
        for signal_number, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, None)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                if self._new_session:
                    os.killpg(self.process.pid, signal_number)
                else:
                    self.process.send_signal(signal_number)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait_s)
        self.log_path.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
