"""How many torch threads a stage actor computes with.

Ray starts each worker with ``OMP_NUM_THREADS`` set to the CPUs the task or actor reserves
(at least 1), and torch takes its intra-op thread count from it. A model actor whose
reservation the graph fit shrank to a fraction of a CPU (so that decode and write keep theirs,
samflow/pipeline/resources.py) then computes on one thread however many cores the node has: the CLIP
path ran at half the model's own rate for that alone. The reservation is a scheduling share, not
a thread budget, so the actor sets its threads from what the stage asked for instead.
"""

from __future__ import annotations

import math
import os
from typing import Any


def torch_threads(requested: int | None, num_cpus: float, node_cpus: int | None = None) -> int:
    """Threads for one actor: ``requested`` when given, else the stage's configured ``num_cpus``
    rounded up; never more than the node's CPUs, never fewer than one."""
    node = node_cpus or _node_cpus()
    wanted = requested if requested else math.ceil(num_cpus)
    return max(1, min(int(wanted), node))


def _node_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def with_torch_threads(stage_cls: type, requested: int | None, num_cpus: float) -> type:
    """``stage_cls`` whose constructor first sets the actor's torch threads (model load included),
    on the node where the actor runs; the class name (Ray Data's operator name) is kept."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        import torch  # in the actor: the driver builds the graph without loading torch

        threads = torch_threads(requested, num_cpus)
        torch.set_num_threads(threads)
        stage_cls.__init__(self, *args, **kwargs)
        info = getattr(self, "info", None)
        if isinstance(info, dict):  # recorded with the stage's model in the run manifest
            info["torch_threads"] = threads

    return type(stage_cls.__name__, (stage_cls,), {"__init__": __init__, "__qualname__": f"threads.{stage_cls.__name__}"})
