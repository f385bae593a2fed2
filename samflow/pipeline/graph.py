"""The Ray Data graph of one run: read+decode -> model stages -> staged shards -> commits.

The driver consumes the stream of staged shards and commits each one as it arrives, so a run
killed midway keeps everything committed so far and a re-run picks up the rest.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.data import ActorPoolStrategy

from samflow.actors.batch import dropping_outputs
from samflow.actors.stage import StageConfig, StageContext
from samflow.actors.table import STAGE_TABLE
from samflow.actors.threads import with_torch_threads
from samflow.config import RayConfig, RunConfig
from samflow.inputs.plan import ContainerKeys
from samflow.media.decode import DecodeStage
from samflow.models.loading.cache import with_model_cache
from samflow.pipeline.resources import (
    GraphFit,
    StagePlacement,
    StageRequest,
    cluster_capacity,
    wait_for_fit,
)
from samflow.pipeline.writer import stage_shard
from samflow.store.catalog import Catalog, ShardResult
from samflow.store.storage import StorageSource

log = logging.getLogger(__name__)

DECODE_BATCH = 8
MAX_INPUT_BLOCKS = 10_000


@dataclass
class PipelineStats:
    """What the driver learns from the committed shards: rows per table, per-stage busy time,
    models, and where each stage's batches ran (``placement[stage][node_id]``)."""

    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    shards: int = 0
    stage_busy_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    placement: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # Ray Data's own per-operator figures (task wall time summed, first start to last end).
    operators: dict[str, dict[str, float]] = field(default_factory=dict)
    # Worker processes (actor incarnations) that ran each stage's batches.
    workers: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    _seen_batches: set[str] = field(default_factory=set, repr=False)
    # Epoch seconds: the run's start, Ray ready, the first model batch's start, the last commit
    # (where a run's time goes besides the models: see phases()).
    started_at: float = 0.0
    ray_ready_at: float = 0.0
    first_batch_at: float = math.inf
    last_commit_at: float = 0.0

    def phases(self) -> dict[str, float]:
        """Seconds of the run's phases: ``ray_start`` (joining or starting Ray), ``to_first_batch``
        (actors start, models load, the first inputs decode), ``streaming`` (first model batch to
        the last commit: the per-image part of the run)."""
        if not self.started_at or math.isinf(self.first_batch_at) or not self.last_commit_at:
            return {}
        return {
            "ray_start": self.ray_ready_at - self.started_at,
            "to_first_batch": self.first_batch_at - self.ray_ready_at,
            "streaming": self.last_commit_at - self.first_batch_at,
        }

    def add(self, result: ShardResult, meta: dict[str, list[dict[str, Any]]]) -> None:
        self.shards += 1
        for table, count in result.rows.items():
            self.rows[table] += count
        for stage, batches in meta.items():
            for info in batches:
                # A stage batch whose rows were split over two shards shows up in both.
                key = f"{stage}/{info.get('batch', '')}"
                if key in self._seen_batches:
                    continue
                self._seen_batches.add(key)
                self._add_batch(stage, info)

    def _add_batch(self, stage: str, info: dict[str, Any]) -> None:
        self.stage_busy_s[stage] += info["busy_s"]
        self.first_batch_at = min(self.first_batch_at, info.get("started_at", math.inf))
        self.models[stage] = {k: info[k] for k in ("model", "checkpoint_sha256", "torch_threads") if k in info}
        node = self.placement.setdefault(stage, {}).setdefault(
            info.get("node", ""), {"batches": 0, "rows": 0, "busy_s": 0.0}
        )
        node["batches"] += 1
        node["rows"] += info.get("rows", 0)
        node["busy_s"] += info["busy_s"]
        if "pid" in info:
            self.workers[stage].add(info["pid"])


def _pool(stage: StageConfig, placement: StagePlacement) -> dict[str, Any]:
    """map_batches arguments of one model stage's actor pool, with the fitted resources."""
    low, high = stage.concurrency
    return {
        "batch_size": stage.batch_size,
        "num_gpus": placement.num_gpus or None,
        "num_cpus": placement.num_cpus,
        "compute": ActorPoolStrategy(min_size=low, max_size=max(low, high)),
    }


@dataclass(frozen=True)
class ModelStage:
    """One model stage of this run's graph: its class, its config section (pool settings
    included) and the section's field that names its model."""

    name: str
    cls: type
    config: StageConfig
    model_field: str = "model"

    @property
    def model_sha256(self) -> str | None:
        """The section's pin belongs to its ``model``; another model's pin goes in its URI."""
        return self.config.model_sha256 if self.model_field == "model" else None


def model_stages(cfg: RunConfig, videos: bool = True) -> list[ModelStage]:
    """The stages of the stage table (samflow/actors/table.py) this run runs, in graph order;
    without ``videos`` (the input surely holds none) not the track stage: nothing to track."""
    stages = []
    for entry in STAGE_TABLE:
        section = getattr(cfg.stages, entry.section)
        if entry.runs(section, cfg, videos):
            stages.append(ModelStage(entry.name, entry.stage_class(), section, entry.model_field))
    return stages


def track_videos(cfg: RunConfig) -> bool:
    """Whether videos go to the track stage; otherwise decode samples their frames and they are
    annotated like images."""
    return cfg.stages.track.runs(cfg)


# Ray kills a task worker idle for 1 s once the node has more workers than CPUs, which the model
# actors and Ray Data's own actors always make it have: decode tasks that pause under backpressure
# then restart their worker (and its imports, about 1.5 CPU-seconds) every few seconds, taking
# that CPU from the models. On a Ray of its own a run keeps idle workers for 10 s.
LOCAL_RAY_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 10_000}


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
        ray.init(address="local", num_cpus=os.cpu_count() or 1, runtime_env=runtime_env, include_dashboard=False,
                 _system_config=LOCAL_RAY_SYSTEM_CONFIG)


def cpu_fallback(cfg: RayConfig) -> bool:
    """Whether GPU stages run on CPU when the cluster lacks the GPUs (``ray.cpu_fallback``;
    auto: only on a local Ray, a joined cluster may add GPU nodes on demand)."""
    if cfg.cpu_fallback is not None:
        return cfg.cpu_fallback
    return not (cfg.address or os.environ.get("RAY_ADDRESS"))


def fit_to_cluster(cfg: RunConfig, stages: list[ModelStage], reads_containers: bool = False) -> GraphFit:
    """What each part of the graph asks Ray for, fitted to the connected cluster before the
    stream starts (see samflow/pipeline/resources.py); raises ResourceShortage when it cannot."""
    requests = [
        StageRequest(s.name, s.config.num_cpus, s.config.num_gpus, s.config.concurrency[0]) for s in stages
    ]
    fit = wait_for_fit(
        requests, lambda: cluster_capacity(cfg.ray.autoscaling), cpu_fallback(cfg.ray), cfg.ray.resource_wait_s,
        reads_containers=reads_containers,
        reservation_ratio=ray.data.DataContext.get_current().op_resource_reservation_ratio,
    )
    for note in fit.notes:  # fitting a small node is normal: shown with -v
        log.info("%s", note)
    for warning in fit.warnings:
        log.warning("%s", warning)
    return fit


def _decode_task_args(num_cpus: float) -> Callable[[], dict[str, Any]]:
    return lambda: {"num_cpus": num_cpus}


def build_dataset(
    items: list[dict[str, Any]] | ray.data.Dataset | ContainerKeys, cfg: RunConfig, dst: str, run_id: str,
    videos: bool = True,
) -> ray.data.Dataset:
    """``items``: {uri, size} rows, or a dataset of them in small blocks (the plan's, from
    samflow/inputs/plan.py, with inline ``data`` and preset errors), or members of containers
    still to be read. ``videos``: False when the items surely hold no video."""
    stages = model_stages(cfg, videos)
    fit = fit_to_cluster(cfg, stages, reads_containers=isinstance(items, ContainerKeys))
    if isinstance(items, ContainerKeys):
        ds = items.items(fit.item_cpus)
    elif isinstance(items, ray.data.Dataset):
        # Small input blocks keep the stream moving: shards commit as they finish, not at the end.
        # The plan made them (inputs.todo_blocks): Ray Data's repartition would need a whole CPU.
        ds = items
    else:
        blocks = max(1, min(MAX_INPUT_BLOCKS, math.ceil(len(items) / DECODE_BATCH)))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
    # Decode holds no model: stateless CPU tasks, which release their CPU between batches (a
    # long-lived decode actor on a GPU node could keep a restarting GPU actor from its CPU).
    # Giving them a remote-args function keeps Ray Data from fusing decode into the first model
    # actor, where it would run serially with the model instead of beside it.
    # stream: a video's frames leave in chunks of input.video.chunk_frames, never one block.
    decode = DecodeStage(StorageSource(cfg.storage), cfg.input, defer_videos=videos and track_videos(cfg))
    # num_cpus too: Ray Data's resource budget counts the static amount (a whole CPU without it).
    ds = ds.map_batches(
        decode.stream,
        batch_size=DECODE_BATCH,
        batch_format="numpy",
        num_cpus=fit.decode_cpus,
        ray_remote_args_fn=_decode_task_args(fit.decode_cpus),
    )
    # Model stages and the writer take Arrow batches (their __call__ is @arrow_batches): the
    # masks column stays Arrow from the stage that emits it to the Parquet file.
    context = StageContext(run=cfg, dst=dst, store=StorageSource(cfg.storage))
    for position, stage in enumerate(stages, start=1):
        pool = _pool(stage.config, fit.stages[stage.name])
        # s3:// and https:// models are fetched (once per node) by the actor before it loads
        stage_cls = with_model_cache(stage.cls, cfg.storage, stage.model_sha256, stage.model_field)
        stage_cls = with_torch_threads(stage_cls, stage.config.num_threads, stage.config.num_cpus)
        if position == len(stages):  # nothing after the last model stage reads the pixels
            stage_cls = dropping_outputs(stage_cls, ("pixels",))
        ds = ds.map_batches(stage_cls, fn_constructor_kwargs={"config": stage.config, "context": context},
                            batch_format="pyarrow", **pool)
    if not stages:
        # With the writer's resources it fuses into the writer's tasks; with Ray's default of a
        # whole CPU it could never be scheduled beside the actors on a 1-CPU cluster.
        ds = ds.drop_columns(["pixels"], num_cpus=fit.write_cpus)
    embed = cfg.stages.embed
    embed_model = embed.model if embed.enabled and "clip" in embed.models else None
    # The run's own reservation ratio (resources.py): every operator's minimum stays reserved.
    ds.context.op_resource_reservation_ratio = fit.reservation_ratio
    return ds.map_batches(
        stage_shard,
        fn_kwargs={"dst": dst, "storage": cfg.storage, "run_id": run_id, "embed_model": embed_model,
                   "ground_truth": cfg.input.sa1b_ground_truth},
        batch_size=cfg.output.shard_rows,
        batch_format="pyarrow",
        num_cpus=fit.write_cpus,
    )


CommitHook = Callable[[ShardResult, dict[str, list[dict[str, Any]]]], None]


def run_pipeline(
    items: list[dict[str, Any]] | ray.data.Dataset,
    cfg: RunConfig,
    dst: str,
    run_id: str,
    on_commit: CommitHook | None = None,
    before_commit: Callable[[], None] | None = None,
    videos: bool = True,
) -> PipelineStats:
    """Run the graph over ``items`` ({uri, size}) and commit every shard as it is staged.

    ``on_commit(result, meta)`` is called after each shard's commit (progress reporting);
    ``before_commit()`` before each (the lease's check: it raises to stop the run).
    """
    before_commit = before_commit or (lambda: None)
    stats = PipelineStats(started_at=time.time())
    if isinstance(items, list) and not items:
        return stats
    ensure_ray(cfg.ray)
    stats.ray_ready_at = time.time()
    catalog = Catalog(dst, cfg.storage)
    dataset = build_dataset(items, cfg, dst, run_id, videos)
    held: list[tuple[ShardResult, dict[str, list[dict[str, Any]]]]] = []
    video_uris: set[str] = set()
    for row in dataset.iter_rows():
        result = ShardResult.from_row(row)
        meta: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in row["meta"]:
            meta[entry["stage"]].append({k: v for k, v in entry["info"].items() if v is not None})
        if result.frame_uris or video_uris.intersection(result.uris):
            # A video's frames may span shards: committing one of them would mark the video done
            # and a kill before the others would lose them. They commit together at the end.
            # (Not covered: a cut-short video's error row reaching the driver before any of its
            # frames; decode emits it after them, and blocks keep that order in practice.)
            video_uris.update(result.frame_uris)
            held.append((result, meta))
            continue
        before_commit()
        catalog.commit(run_id, result)
        _committed(stats, result, meta, on_commit)
    if held:
        before_commit()
        catalog.commit_group(run_id, [result for result, _ in held])
        for result, meta in held:
            _committed(stats, result, meta, on_commit)
    catalog.finish_run(run_id)
    stats.operators = operator_times(dataset)
    return stats


def _committed(
    stats: PipelineStats, result: ShardResult, meta: dict[str, list[dict[str, Any]]],
    on_commit: CommitHook | None,
) -> None:
    stats.add(result, meta)
    stats.last_commit_at = time.time()
    log.info("committed shard %s: %s", result.shard, result.rows)
    if on_commit is not None:
        on_commit(result, meta)


def operator_times(dataset: ray.data.Dataset) -> dict[str, dict[str, float]]:
    """Per Ray Data operator: summed task wall time, span (first task start to last end) and
    output rows, from the executed dataset's stats. Empty when Ray's summary is unavailable
    (it is not a public API; the figures are for the manifest and benchmarks only)."""
    try:
        summary = dataset._get_stats_summary()
    except Exception as exc:  # noqa: BLE001 - stats are informative, never fatal
        log.warning("no Ray Data stats: %s", exc)
        return {}
    out: dict[str, dict[str, float]] = {}
    for operator in _operator_summaries(summary):
        start, end = operator.earliest_start_time, operator.latest_end_time
        out[operator.operator_name] = {
            "task_wall_s": float(operator.wall_time.sum) if operator.wall_time else 0.0,
            "span_s": float(end - start) if start is not None and end is not None else 0.0,
            "rows": int(operator.output_num_rows.sum) if operator.output_num_rows else 0,
        }
    return out


def _operator_summaries(summary: Any) -> list[Any]:
    found = []
    while summary is not None:
        found = list(summary.operators_stats) + found
        parents = getattr(summary, "parents", None) or []
        summary = parents[0] if parents else None
    return found
