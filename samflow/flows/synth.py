"""Prefect flow ``synth-dataset``: plan the candidates a DST's trusted masks give, generate and
check them (samflow/synth/pipeline.py), commit the run manifest under SYN/_runs/.
``build_synth_deployment``: the flow as a deployment (on demand, or on a cron)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import samflow
from samflow.config import RunConfig, config_from
from samflow.errors import retry_unless_permanent
from samflow.flows.annotate import new_run_id
from samflow.store.catalog import RUNS
from samflow.store.lease import Lease
from samflow.store.storage import absolute
from samflow.synth.pipeline import SynthStats, run_synth
from samflow.synth.plan import candidates, recipe
from samflow.synth.store import SynthStore
from samflow.synth.trusted import trusted_images

if TYPE_CHECKING:
    import pyarrow as pa
    from prefect.deployments.runner import RunnerDeployment


@dataclass
class SynthPlan:
    todo: pa.Table
    images: int
    candidates: int
    already_done: int
    removed_uncommitted: int
    tiers: dict[str, int]
    seconds: float


def make_plan(dst: str, syn: str, cfg: RunConfig) -> SynthPlan:
    """Candidates of DST's trusted masks that SYN has not committed; leftovers of killed runs go first."""
    import pyarrow as pa
    import pyarrow.compute as pc

    started = time.perf_counter()
    store = SynthStore(syn, cfg.storage)
    removed = store.clean()
    images = list(trusted_images(dst, cfg))
    tiers: dict[str, int] = {}
    for image in images:
        tiers[image.tier] = tiers.get(image.tier, 0) + 1
    table = candidates(images, cfg)
    done = store.done_keys()
    todo = table.filter(pc.invert(pc.is_in(table.column("key"), pa.array(sorted(done), pa.string())))) if done else table
    return SynthPlan(todo, len(images), table.num_rows, table.num_rows - todo.num_rows, len(removed), tiers,
                     time.perf_counter() - started)


@task(name="synth-plan", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
def plan_task(dst: str, syn: str, cfg: RunConfig) -> SynthPlan:
    return make_plan(dst, syn, cfg)


@task(name="synth-pipeline", cache_policy=NO_CACHE)
def pipeline_task(plan: SynthPlan, cfg: RunConfig, syn: str, run_id: str, on_commit: Any = None,
                  before_commit: Any = None) -> SynthStats:
    # No retries: shards commit as they finish; running the flow again does what is missing.
    return run_synth(plan.todo, cfg, syn, run_id, on_commit=on_commit, before_commit=before_commit)


def manifest(dst: str, syn: str, run_id: str, cfg: RunConfig, plan: SynthPlan, stats: SynthStats,
             started: float) -> dict[str, Any]:
    total = time.perf_counter() - started
    return {
        "run_id": run_id, "kind": "synth", "samflow_version": samflow.__version__, "src": dst, "dst": syn,
        "started_at": (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=total)).isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "config": cfg.model_dump(mode="json"),
        "recipe": recipe(cfg),
        "models": stats.models,
        "counts": {
            "images_with_trusted_masks": plan.images, "by_source": plan.tiers, "candidates": plan.candidates,
            "already_done": plan.already_done, "inputs": plan.todo.num_rows, "generated": stats.candidates,
            "kept": stats.kept, "dropped": stats.dropped, "shards": stats.shards,
            "removed_uncommitted_files": plan.removed_uncommitted,
        },
        "dropped_by_reason": dict(stats.reasons),
        "timings_s": {"total": total, "plan": plan.seconds, "busy": dict(stats.busy_s),
                      "images_per_s": stats.candidates / total if total else 0.0},
    }


def report_markdown(record: dict[str, Any]) -> str:
    counts = record["counts"]
    lines = [f"# samflow synth {record['run_id']}", "", f"{record['src']} -> {record['dst']}", "",
             "| count | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in counts.items() if not isinstance(value, dict)]
    lines += ["", "| dropped because | images |", "|---|---|"]
    lines += [f"| {reason} | {n} |" for reason, n in sorted(record["dropped_by_reason"].items())]
    return "\n".join(lines) + "\n"


@flow(name="synth-dataset")
def synth_dataset(dst: str, syn: str, config: dict[str, Any] | None = None, profile: str | None = None,
                  observer: Any = None, lease: Any = None) -> dict[str, Any]:
    """Generate images from the trusted masks of ``dst`` into ``syn``; returns the run record
    (a summary without ``run_id`` when nothing is new). ``observer``: ``planned(run_id, total)``
    and ``committed(result, meta)`` (the CLI's progress). The run holds SYN's lease, or
    ``lease``, a held :class:`Lease` the caller passes; it is checked before every commit."""
    cfg = config_from(config, profile=profile)
    if lease is not None:
        return _synth(dst, syn, cfg, observer, lease)
    with Lease(syn, cfg.storage, ttl_s=cfg.output.lease_ttl_s) as held:
        return _synth(dst, syn, cfg, observer, held)


def _synth(dst: str, syn: str, cfg: RunConfig, observer: Any, lease: Lease) -> dict[str, Any]:
    started = time.perf_counter()
    logger = get_run_logger()
    run_id = new_run_id()
    plan = plan_task(dst, syn, cfg)
    logger.info("synth %s: %d images with trusted masks, %d candidates, %d already done, %d to generate",
                run_id, plan.images, plan.candidates, plan.already_done, plan.todo.num_rows)
    if observer is not None:
        observer.planned(run_id, plan.todo.num_rows)
    if not plan.todo.num_rows:
        return {"run_id": None, "counts": {"images_with_trusted_masks": plan.images, "candidates": plan.candidates,
                                           "already_done": plan.already_done, "inputs": 0}}
    stats = pipeline_task(plan, cfg, syn, run_id, observer.committed if observer is not None else None,
                          lease.check)
    lease.check()
    record = manifest(dst, syn, run_id, cfg, plan, stats, started)
    store = SynthStore(syn, cfg.storage)
    record["path"] = store.catalog.path(RUNS, f"{run_id}.json")
    store.catalog.write_json(record["path"], record)
    create_markdown_artifact(report_markdown(record), key="samflow-synth-run", description="samflow synth")
    logger.info("synth %s done: %s", run_id, record["counts"])
    return record


def build_synth_deployment(
    dst: str, syn: str, *, config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    profile: str | None = None, cron: str | None = None, name: str = "synth", timezone: str = "UTC",
    work_pool_name: str | None = None,
) -> RunnerDeployment:
    """``synth_dataset(dst, syn, config, profile)`` as a deployment: on ``cron``, or on demand."""
    from samflow.flows.deployments import resolve_config, scheduled_deployment

    tree = resolve_config(config).model_dump(mode="json", exclude_unset=True)
    parameters = {"dst": absolute(dst), "syn": absolute(syn), "config": tree or None, "profile": profile}
    return scheduled_deployment(
        synth_dataset, name=name, parameters=parameters,
        cron=cron, timezone=timezone, work_pool_name=work_pool_name,
        command="synth", description=f"samflow synth {dst} -> {syn}",
    )
