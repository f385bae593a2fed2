"""Running the command line as a user does: a subprocess in a chosen working directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str, cwd: Path, timeout: float = 1200,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in ``cwd``, importing this checkout's samflow (``env``: more
    environment, e.g. RAY_ADDRESS to join the session's cluster)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def samflow(*args: str, cwd: Path, timeout: float = 1200, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``samflow ARGS`` in ``cwd``; fails the test with its stderr when it exits non-zero."""
    done = run_module("samflow.cli.main", *args, cwd=cwd, timeout=timeout, env=env)
    assert done.returncode == 0, f"samflow {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def hears_ctrl_c() -> None:
    """``preexec_fn`` for a child the test stops with SIGINT: Ctrl-C's default action, as at a
    terminal. A shell starts background commands (pytest among them) with SIGINT ignored, and
    children inherit that, so without this the child would never hear it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
