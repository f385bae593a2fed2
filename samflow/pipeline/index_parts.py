"""Ray tasks that encode an index's vectors in parts across a cluster's nodes (the runner of
:class:`samflow.index.distributed.Parallel`; ``samflow index build --ray-tasks N``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
import ray

from samflow.index.distributed import Parallel, encode_part

IN_FLIGHT_PER_TASK = 2  # ranges queued per task slot: the object store holds a few ranges, not every row


def _encode_on_node(trained: bytes, rows: np.ndarray) -> tuple[bytes, str]:
    return encode_part(trained, rows), ray.get_runtime_context().get_node_id()


def ray_parallel(tasks: int) -> Parallel:
    """Up to ``tasks`` Ray tasks at a time, spread over the nodes (Ray must be started)."""
    encode = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_encode_on_node)

    def run(trained: bytes, ranges: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, bytes, str]]:
        shared = ray.put(trained)
        pending: deque = deque()
        for begin, rows in ranges:
            pending.append((begin, encode.remote(shared, rows)))
            while len(pending) >= tasks * IN_FLIGHT_PER_TASK:
                yield _done(pending.popleft())
        while pending:
            yield _done(pending.popleft())

    return Parallel(run, tasks)


def _done(entry: tuple[int, ray.ObjectRef]) -> tuple[int, bytes, str]:
    begin, ref = entry
    part, node = ray.get(ref)
    return begin, part, node
