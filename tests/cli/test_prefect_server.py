"""Prefect's temporary server as samflow's commands start it when no server is configured."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = """
import socket
from samflow.cli import prefect_server

taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
ports = iter([taken.getsockname()[1]])
free = prefect_server._free_port
prefect_server._free_port = lambda: next(ports, None) or free()  # the first port is taken meanwhile

from prefect import flow
with prefect_server.temporary_server() as ready:
    ready()
    print(flow(lambda: 7)(), prefect_server.os.environ["PREFECT_API_URL"].endswith(f":{taken.getsockname()[1]}/api"))
"""


def test_the_temporary_server_moves_to_another_port_when_its_port_was_taken(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # as on a fresh machine
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"  # a loaded test machine
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "7 False"
