"""The Ray a run starts for itself keeps a paused task worker instead of restarting it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

CODE = """
import os, time, ray
from samflow.config import RayConfig
from samflow.pipeline.graph import ensure_ray

ensure_ray(RayConfig())

@ray.remote(num_cpus=0)
class Holder:  # a model stage's actor, Ray Data's own actors: more workers than CPUs
    def ready(self):
        return True

holders = [Holder.remote() for _ in range((os.cpu_count() or 1) + 2)]
ray.get([h.ready.remote() for h in holders])

@ray.remote(num_cpus=0.5)  # decode tasks take fractions of a CPU: more of them than CPUs run at once
def decode_like():
    time.sleep(0.5)
    return os.getpid()

def burst():
    return set(ray.get([decode_like.remote() for _ in range(4)]))

first = burst()
time.sleep(3)  # a pause under backpressure: longer than Ray's default 1 s before it kills
print(len(first), burst() <= first)
"""


def test_a_task_worker_paused_for_seconds_is_reused_not_restarted():
    ray_tmp = tempfile.mkdtemp(prefix="sfr-")  # short: Ray's socket paths must fit 107 bytes
    # RAY_ADDRESS would join the session's cluster: this checks the Ray a run starts for itself.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    try:
        proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    workers, reused = proc.stdout.strip().splitlines()[-1].split()
    assert int(workers) > 1 and reused == "True", "a paused task worker was killed and another started"
