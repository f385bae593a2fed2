"""Prefect flow ``annotate_dataset``: plan, run the Ray Data pipeline, commit the run manifest."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psutil
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import samflow
from samflow.config import RunConfig, config_from
from samflow.errors import retry_unless_permanent
from samflow.flows.progress import LoggedProgress
from samflow.inputs.formats import LOOSE_FORMATS
from samflow.inputs.plan import (
    ContainerKeys,
    items_from_keys,
    key_dataset,
    resolve_source,
    todo_blocks,
)
from samflow.pipeline.graph import CommitHook, PipelineStats, ensure_ray, run_pipeline
from samflow.store import containers, doneset
from samflow.store.catalog import CHECKPOINT_EVERY, RUNS, Catalog
from samflow.store.lease import Lease
from samflow.store.runs import build_report, error_kinds, record_id, report_markdown
from samflow.store.storage import absolute


@dataclass
class Plan:
    items: list[dict[str, Any]] | ContainerKeys | Any  # a Ray Dataset of items (samflow/inputs/plan.py)
    listed: int
    already_done: int
    removed_uncommitted: int
    seconds: float
    new: int = 0
    excluded: int = 0
    format: str = "files"
    may_hold_videos: bool = True  # False: the track stage is not started
    # Containers the plan found with nothing left to do, and those already recorded so (a run
    # records the former at its end: a re-run with nothing new writes nothing).
    whole: dict[str, tuple[int, int]] = field(default_factory=dict)
    known_whole: dict[str, tuple[int, int]] = field(default_factory=dict)
    ray_start_s: float = 0.0  # of ``seconds``: joining or starting Ray


def new_run_id() -> str:
    return record_id()


def make_plan(src: str, dst: str, cfg: RunConfig, read_only: bool = False) -> Plan:
    """Resolve SRC's format, then anti-join its item keys with DST's done-set, in Ray (see
    samflow/store/doneset.py). Unless ``read_only``, clear leftovers of killed runs first."""
    start = time.perf_counter()
    catalog = Catalog(dst, cfg.storage)
    committed = catalog.committed_names()
    removed = [] if read_only else catalog.remove_uncommitted(committed)
    source = resolve_source(src, cfg, dst)
    in_containers = source.format not in LOOSE_FORMATS
    whole = containers.whole_containers(catalog) if in_containers else {}
    files, skipped = containers.skip_whole(source.files, whole)
    ray_started = time.perf_counter()
    ensure_ray(cfg.ray)
    ray_start_s = time.perf_counter() - ray_started
    # A plan writes nothing to DST (the run compacts the done-set at its end). A run's plan
    # also shapes what is to do into the blocks the run streams.
    shape = None if read_only else (lambda todo, listed: todo_blocks(todo, source.format, listed))
    result = doneset.plan(key_dataset(replace(source, files=files), cfg), dst, cfg.storage, committed, shape=shape,
                          members=in_containers and not read_only)
    found = _found_whole(result, dict(files)) if result.members else {}
    # A read-only plan is only looked at (samflow plan): its keys are not shaped into items.
    items = items_from_keys(result.todo, source.format, cfg.storage) if result.new and not read_only else []
    result.listed += skipped
    return Plan(items, result.listed, result.done, len(removed), time.perf_counter() - start,
                new=result.new, excluded=source.excluded, format=source.format,
                may_hold_videos=source.may_hold_videos, ray_start_s=ray_start_s, whole=found, known_whole=whole)


def _found_whole(result: doneset.PlanResult, sizes: dict[str, int]) -> dict[str, tuple[int, int]]:
    """``uri: (size, members)`` of the listed containers with no member left to do."""
    todo = set(result.todo.unique("container")) if result.new else set()
    return {uri: (sizes[uri], count) for uri, count in result.members.items() if uri not in todo and uri in sizes}


def record_whole(dst: str, cfg: RunConfig, plan: Plan) -> int:
    """Record the containers ``plan`` found done whole, so later plans do not open them."""
    return containers.record_whole(Catalog(dst, cfg.storage), plan.known_whole, plan.whole)


# Permanent errors (missing source, denied bucket, ...) are not retried: they cannot succeed.
@task(name="plan", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
def plan_run(src: str, dst: str, cfg: RunConfig) -> Plan:
    """Plan the run: what SRC holds that DST has not committed; clear leftovers of killed runs."""
    return make_plan(src, dst, cfg)


# NO_CACHE: the run has side effects and its inputs (a progress hook) need not be hashable.
@task(name="pipeline", cache_policy=NO_CACHE)
def run_pipeline_task(
    plan: Plan, cfg: RunConfig, dst: str, run_id: str, on_commit: CommitHook | None = None,
    before_commit: Callable[[], None] | None = None,
) -> PipelineStats:
    # No task retries: every shard commits as it finishes, so a failed run is resumed by running
    # the flow again, which plans only what is missing.
    return run_pipeline(plan.items, cfg, dst, run_id, on_commit=on_commit, before_commit=before_commit,
                        videos=plan.may_hold_videos)


@task(name="commit", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
def commit_run(manifest: dict[str, Any], cfg: RunConfig, dst: str) -> str:
    catalog = Catalog(dst, cfg.storage)
    path = catalog.path(RUNS, f"{manifest['run_id']}.json")
    catalog.write_json(path, manifest)
    return path


def _manifest(src: str, dst: str, run_id: str, cfg: RunConfig, plan: Plan,
              stats: PipelineStats, started: float, pipeline_s: float) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "samflow_version": samflow.__version__,
        "src": src,
        "dst": dst,
        "started_at": (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.perf_counter() - started)).isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "config": cfg.model_dump(mode="json"),
        "models": stats.models,
        # Where each stage's batches ran: {stage: {ray node id: {batches, rows, busy_s}}}.
        "placement": stats.placement,
        "counts": {
            "listed": plan.listed,
            "already_done": plan.already_done,
            "inputs": plan.new,
            "images": stats.rows.get("images", 0),
            "errors": stats.rows.get("errors", 0),
            "annotations": stats.rows.get("annotations", 0),
            "embeddings": stats.rows.get("embeddings", 0),
            "shards": stats.shards,
            "removed_uncommitted_files": plan.removed_uncommitted,
        },
        "timings_s": {
            "total": time.perf_counter() - started,
            "plan": plan.seconds,
            "pipeline": pipeline_s,
            "pipeline_phases": stats.phases(),
            "startup": _startup(plan, stats, started),
            "stage_busy": dict(stats.stage_busy_s),
            "ray_operators": stats.operators,
        },
    }


def _startup(plan: Plan, stats: PipelineStats, started: float) -> dict[str, float]:
    """Seconds from this process's start to the first model batch, by phase: ``process`` (the
    interpreter, imports, Prefect's server until the flow began; from the CLI also Ray's start,
    which runs beside the server), ``ray_start`` (joining or starting Ray in the flow: 0 when the
    CLI started it), ``plan`` (the rest of it), ``actors`` (actor starts, model loads, the first
    decode) and their ``total``."""
    if math.isinf(stats.first_batch_at):
        return {}
    process_began = psutil.Process().create_time()
    flow_began = time.time() - (time.perf_counter() - started)
    phases = {"process": flow_began - process_began, "ray_start": plan.ray_start_s,
              "plan": plan.seconds - plan.ray_start_s, "actors": stats.first_batch_at - stats.started_at,
              "total": stats.first_batch_at - process_began}
    return {name: round(max(value, 0.0), 3) for name, value in phases.items()}


def _artifact(manifest: dict[str, Any], cfg: RunConfig) -> None:
    """The run report (the same one ``samflow runs DST RUN_ID`` prints) as a markdown artifact."""
    errors = error_kinds(manifest["dst"], manifest["run_id"], cfg.storage) if manifest["counts"]["errors"] else []
    markdown = report_markdown(build_report(manifest, errors))
    create_markdown_artifact(markdown, key="samflow-annotate-run", description="samflow annotate")


@flow(name="annotate-dataset")
def annotate_dataset(
    src: str,
    dst: str,
    config: dict[str, Any] | None = None,
    profile: str | None = None,
    observer: Any = None,
    lease: Any = None,
) -> dict[str, Any]:
    """Annotate every new image under ``src`` into Parquet tables under ``dst``.

    Returns the run manifest; when nothing is new, returns a summary and writes nothing.
    ``observer`` (in-process callers only, e.g. the CLI's progress display) gets
    ``planned(run_id, total)`` and ``committed(result, meta)`` after every shard commit; without
    one the run logs its progress line every few seconds (samflow/flows/progress.py).
    The run holds DST's lease (one run per output; see store/lease.py), or ``lease``, a held
    :class:`Lease` the caller passes (the CLI takes it before Prefect starts); it checks the lease
    before every commit and stops with ``LeaseLost`` once another run has taken it over.
    """
    cfg = config_from(config, profile=profile)
    src, dst = absolute(src), absolute(dst)  # the workers do not share this process's folder
    # A run nobody watches (a deployment's): its progress line goes to the run log.
    logged = LoggedProgress(get_run_logger()) if observer is None else None
    try:
        if lease is not None:
            return _annotate(src, dst, cfg, observer or logged, lease)
        with Lease(dst, cfg.storage, ttl_s=cfg.output.lease_ttl_s) as held:
            return _annotate(src, dst, cfg, observer or logged, held)
    finally:
        if logged is not None:
            logged.close()


def _annotate(src: str, dst: str, cfg: RunConfig, observer: Any, lease: Lease) -> dict[str, Any]:
    started = time.perf_counter()
    logger = get_run_logger()
    run_id = new_run_id()
    plan = plan_run(src, dst, cfg)
    logger.info("run %s: %d listed, %d already done, %d to process",
                run_id, plan.listed, plan.already_done, plan.new)
    observer.planned(run_id, plan.new)
    if not plan.new:
        return {"run_id": None, "counts": {"listed": plan.listed, "already_done": plan.already_done, "inputs": 0}}
    pipeline_start = time.perf_counter()
    stats = run_pipeline_task(plan, cfg, dst, run_id, observer.committed, lease.check)
    lease.check()
    doneset.compact_done(dst, cfg.storage)
    record_whole(dst, cfg, plan)
    Catalog(dst, cfg.storage).checkpoint(min_markers=CHECKPOINT_EVERY)
    manifest = _manifest(src, dst, run_id, cfg, plan, stats, started, time.perf_counter() - pipeline_start)
    lease.check()
    manifest["path"] = commit_run(manifest, cfg, dst)
    _artifact(manifest, cfg)
    logger.info("run %s done: %s", run_id, manifest["counts"])
    return manifest
