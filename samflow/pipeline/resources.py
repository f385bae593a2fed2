"""Fit a run's Ray Data graph to the cluster before the stream starts, so a run never hangs.

The graph needs, all at once, every model stage's smallest pool, one decode task and one
shard-write task (and one container-reading task for tar or Parquet inputs). Ray Data places the
actors first and they hold their resources for the whole run; if they took every CPU, the tasks
would wait forever. So before the stream starts:

- a stage asking for GPUs the cluster lacks runs on CPU when ``ray.cpu_fallback`` allows it, or
  waits up to ``ray.resource_wait_s`` for an autoscaler, then fails naming the short resource;
- the tasks get their CPU shares first and the model actors share the rest (fractional
  ``num_cpus``: a model actor mostly waits on its model);
- the run lowers ``DataContext.op_resource_reservation_ratio`` so that every operator's minimum
  stays reserved on a small cluster (otherwise the writer, last, may get none).

``fit_graph`` works on plain numbers (unit-tested without Ray); ``cluster_capacity`` reads them
from the connected cluster.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

DECODE_CPUS = 1.0  # per decode task when the cluster has room for it
WRITE_CPUS = 0.5  # per shard-write task when the cluster has room for it
# Per task reading tar / Parquet members for decode: I/O, not compute, so it takes little CPU
# and many read at once.
ITEM_CPUS = 0.05
# On a small cluster the tasks together may take at most this share of the CPUs: the rest is
# left to the model actors.
TASK_SHARE = 0.75
# Ray Data's default DataContext.op_resource_reservation_ratio (Ray 2.60).
RAY_DATA_RESERVATION_RATIO = 0.5
# Ray refuses fractional resources finer than 1/10000; keep every amount a clean multiple.
_GRAIN = 1e-4


@dataclass(frozen=True)
class StageRequest:
    """What one model stage's pool asks for: per actor, and the pool's minimum size."""

    name: str
    num_cpus: float
    num_gpus: float
    min_actors: int


@dataclass(frozen=True)
class Capacity:
    """The cluster's logical resources: totals, per alive node, and whether it can grow."""

    cpus: float
    gpus: float
    nodes: tuple[tuple[float, float], ...] = ()  # (cpus, gpus) per alive node
    autoscaling: bool = False

    @property
    def largest_node_gpus(self) -> float:
        return max((gpus for _, gpus in self.nodes), default=self.gpus)

    @property
    def largest_node_cpus(self) -> float:
        return max((cpus for cpus, _ in self.nodes), default=self.cpus)


@dataclass(frozen=True)
class StagePlacement:
    num_cpus: float
    num_gpus: float


@dataclass(frozen=True)
class GraphFit:
    """Resources each part of the graph asks Ray for; ``notes`` say what was fitted and why (the
    normal case on a small node), ``warnings`` what runs other than configured (GPU -> CPU)."""

    stages: dict[str, StagePlacement]
    decode_cpus: float
    write_cpus: float
    item_cpus: float = 0.0  # 0: the graph has no container-reading step
    # DataContext.op_resource_reservation_ratio for the run (see the module docstring)
    reservation_ratio: float = RAY_DATA_RESERVATION_RATIO
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ResourceShortage(RuntimeError):
    """The graph cannot run on this cluster. ``may_resolve``: an autoscaler could fix it."""

    def __init__(self, message: str, *, resource: str, may_resolve: bool) -> None:
        super().__init__(message)
        self.resource = resource
        self.may_resolve = may_resolve


def fit_graph(
    requests: Sequence[StageRequest],
    capacity: Capacity,
    cpu_fallback: bool,
    reads_containers: bool = False,
    reservation_ratio: float = RAY_DATA_RESERVATION_RATIO,
) -> GraphFit:
    """The resources to ask for so that the minimal graph fits ``capacity`` at once.
    ``reads_containers``: the graph has a task reading tar / Parquet members before decode.

    Raises ResourceShortage when nothing fits (GPUs that are not there, no CPU at all).
    """
    notes: list[str] = []
    warnings: list[str] = []
    gpus = _fit_gpus(requests, capacity, cpu_fallback, warnings)
    if capacity.cpus <= 0:
        raise ResourceShortage(
            "the Ray cluster has no CPU: decoding and writing need a share of one. Fix: start the "
            "head or a worker with CPUs (ray start --num-cpus=N)" + _autoscale_hint(capacity),
            resource="CPU", may_resolve=capacity.autoscaling,
        )
    decode, write, items = _task_cpus(capacity.cpus, reads_containers)
    tasks = decode + write + items
    left = capacity.cpus - tasks
    wanted = sum(r.num_cpus * r.min_actors for r in requests)
    scale = 1.0 if wanted <= left else left / wanted
    stages = {}
    for request in requests:
        # An actor larger than every node would never be placed.
        cpus = _grain_floor(min(request.num_cpus * scale, capacity.largest_node_cpus))
        if cpus < request.num_cpus:
            notes.append(
                f"stage {request.name}: num_cpus {request.num_cpus:g} -> {cpus:g} per actor so that "
                f"decoding and writing keep {tasks:g} of the cluster's {capacity.cpus:g} CPUs"
            )
        stages[request.name] = StagePlacement(num_cpus=cpus, num_gpus=gpus[request.name])
    minimum_cpus = tasks + sum(stages[r.name].num_cpus * r.min_actors for r in requests)
    minimum_gpus = sum(stages[r.name].num_gpus * r.min_actors for r in requests)
    ratio = _reservation_ratio(reservation_ratio, minimum_cpus, minimum_gpus, capacity)
    if ratio < reservation_ratio:
        notes.append(
            f"Ray Data's reservation ratio {reservation_ratio:g} -> {ratio:g} so that every "
            f"operator's minimum ({minimum_cpus:g} of {capacity.cpus:g} CPUs) stays reserved"
        )
    return GraphFit(stages=stages, decode_cpus=decode, write_cpus=write, item_cpus=items,
                    reservation_ratio=ratio, notes=notes, warnings=warnings)


def _task_cpus(cpus: float, reads_containers: bool) -> tuple[float, float, float]:
    """CPUs per decode, write and member-reading task: the defaults, or a share of a small
    cluster in the same proportions."""
    wanted = {"decode": DECODE_CPUS, "write": WRITE_CPUS, "items": ITEM_CPUS if reads_containers else 0.0}
    budget = min(sum(wanted.values()), cpus * TASK_SHARE)
    share = {name: _grain_floor(budget * amount / sum(wanted.values())) for name, amount in wanted.items()}
    return share["decode"], share["write"], share["items"]


def _reservation_ratio(default: float, minimum_cpus: float, minimum_gpus: float, capacity: Capacity) -> float:
    """The largest ratio <= ``default`` under which Ray Data can reserve every operator's
    minimum, whichever operators are still running: each reservation is at most ``ratio *
    total / operators + minimum``, so their sum is at most ``ratio * total + minimums``."""
    ratio = min(default, 1.0 - minimum_cpus / capacity.cpus)
    if capacity.gpus > 0:
        ratio = min(ratio, 1.0 - minimum_gpus / capacity.gpus)
    return max(0.0, _grain_floor(ratio))


def _fit_gpus(
    requests: Sequence[StageRequest], capacity: Capacity, cpu_fallback: bool, warnings: list[str]
) -> dict[str, float]:
    """GPUs per actor of each stage: as asked, or 0 (CPU) under ``cpu_fallback``."""
    asking = [r for r in requests if r.num_gpus > 0]
    short = _gpu_shortage(asking, capacity)
    if short is None:
        return {r.name: r.num_gpus for r in requests}
    if cpu_fallback:
        for request in asking:
            warnings.append(f"stage {request.name}: {short}; runs on CPU (ray.cpu_fallback)")
        return {r.name: 0.0 for r in requests}
    names = ", ".join(r.name for r in asking)
    raise ResourceShortage(
        f"not enough GPU for stage(s) {names}: {short}. Fix: add GPU nodes, lower "
        f"stages.<name>.num_gpus or concurrency, or run them on CPU with ray.cpu_fallback=true"
        + _autoscale_hint(capacity),
        resource="GPU", may_resolve=capacity.autoscaling,
    )


def _gpu_shortage(asking: Sequence[StageRequest], capacity: Capacity) -> str | None:
    """Why the GPU stages' minimal pools cannot all be placed, or None when they can."""
    if not asking:
        return None
    need = sum(r.num_gpus * r.min_actors for r in asking)
    if capacity.gpus <= 0:
        return f"they need {need:g} GPU and the cluster has none"
    if need > capacity.gpus + _GRAIN:
        return f"they need {need:g} GPU at least and the cluster has {capacity.gpus:g}"
    widest = max(asking, key=lambda r: r.num_gpus)
    if widest.num_gpus > capacity.largest_node_gpus + _GRAIN:
        return (f"one {widest.name} actor needs {widest.num_gpus:g} GPU and the largest node has "
                f"{capacity.largest_node_gpus:g}")
    return None


def _autoscale_hint(capacity: Capacity) -> str:
    if capacity.autoscaling:
        return " (the cluster autoscales, but none came within ray.resource_wait_s)"
    return " (this cluster has no autoscaler to add nodes)"


def _grain_floor(value: float) -> float:
    return math.floor(value / _GRAIN + 1e-6) * _GRAIN


def wait_for_fit(
    requests: Sequence[StageRequest],
    read_capacity: Callable[[], Capacity],
    cpu_fallback: bool,
    wait_s: float,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    reads_containers: bool = False,
    reservation_ratio: float = RAY_DATA_RESERVATION_RATIO,
) -> GraphFit:
    """``fit_graph`` on the cluster as it is; while only an autoscaler could fix a shortage,
    look again every ``poll_s`` for up to ``wait_s`` seconds, then raise the shortage."""
    deadline = clock() + wait_s
    while True:
        capacity = read_capacity()
        try:
            return fit_graph(requests, capacity, cpu_fallback, reads_containers, reservation_ratio)
        except ResourceShortage as shortage:
            left = deadline - clock()
            if not shortage.may_resolve or left <= 0:
                raise
            log.warning("%s; waiting up to %.0f s more for the autoscaler", shortage, left)
            sleep(min(poll_s, left))


def cluster_capacity(autoscaling: bool | None = None) -> Capacity:
    """Resources of the connected Ray cluster. ``autoscaling`` None: ask the cluster whether
    any node type can still scale up."""
    import ray

    totals = ray.cluster_resources()
    nodes = tuple(
        (float(node["Resources"].get("CPU", 0.0)), float(node["Resources"].get("GPU", 0.0)))
        for node in ray.nodes()
        if node.get("Alive")
    )
    if autoscaling is None:
        autoscaling = _cluster_autoscales()
    return Capacity(
        cpus=float(totals.get("CPU", 0.0)), gpus=float(totals.get("GPU", 0.0)),
        nodes=nodes, autoscaling=autoscaling,
    )


def _cluster_autoscales() -> bool:
    # Ray Data's own test (the cluster config the autoscaler publishes); not a public API, so
    # anything unexpected means "no autoscaler" (fail fast rather than wait for nothing).
    try:
        from ray.data._internal.cluster_autoscaler.util import is_autoscaling_enabled

        return bool(is_autoscaling_enabled())
    except Exception as exc:  # noqa: BLE001 - see above
        log.debug("cannot tell whether the cluster autoscales: %s", exc)
        return False
