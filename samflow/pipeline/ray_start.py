"""Joining or starting Ray, apart from the graph: Ray core only (no Ray Data), so that a command
can start it in a thread of its own while its main thread still imports the rest."""

from __future__ import annotations

import os

import ray

from samflow.config import RayConfig


def ensure_ray(cfg: RayConfig) -> None:
    """Join the configured cluster (or the one a Ray Job runs in), else start a local Ray."""
    if ray.is_initialized():
        return
    runtime_env = cfg.runtime_env or None
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.address, runtime_env=runtime_env)
    else:
        # "local": a new Ray of our own (ray.init() alone joins whatever cluster was started last
        # on this machine), with the machine's real CPUs: fit_to_cluster makes the graph fit.
        ray.init(address="local", num_cpus=os.cpu_count() or 1, runtime_env=runtime_env, include_dashboard=False)
