"""Prefect flow ``annotate_dataset``: plan, run the Ray Data pipeline, commit the run manifest."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

import samflow
from samflow.flows.catalog import RUNS, Catalog
from samflow.flows.config import RunConfig, config_from
from samflow.flows import doneset
from samflow.flows.inputs import items_from_keys, key_dataset, resolve_source
from samflow.flows.pipeline import PipelineStats, ensure_ray, run_pipeline


@dataclass
class Plan:
    items: list[dict[str, Any]] | Any  # a Ray Dataset of items (samflow/flows/inputs.py)
    listed: int
    already_done: int
    removed_uncommitted: int
    seconds: float
    new: int = 0
    excluded: int = 0
    format: str = "files"


def new_run_id() -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def make_plan(src: str, dst: str, cfg: RunConfig, read_only: bool = False) -> Plan:
    """Resolve SRC's format, then anti-join its item keys with DST's done-set, in Ray (see
    samflow/flows/doneset.py). Unless ``read_only``, clear leftovers of killed runs first."""
    start = time.perf_counter()
    catalog = Catalog(dst, cfg.storage)
    committed = catalog.committed_names()
    removed = [] if read_only else catalog.remove_uncommitted(committed)
    source = resolve_source(src, cfg, dst)
    ensure_ray(cfg.ray)
    # Read-only either way: a plan never rewrites DST's done-set (the run compacts it at its end).
    result = doneset.plan(key_dataset(source, cfg), dst, cfg.storage, committed, read_only=True)
    items = items_from_keys(result.todo, source.format, cfg.storage) if result.new else []
    return Plan(items, result.listed, result.done, len(removed), time.perf_counter() - start,
                new=result.new, excluded=source.excluded, format=source.format)


@task(name="plan", retries=2, retry_delay_seconds=5)
def plan_run(src: str, dst: str, cfg: RunConfig) -> Plan:
    """Plan the run: what SRC holds that DST has not committed; clear leftovers of killed runs."""
    return make_plan(src, dst, cfg)


@task(name="pipeline")
def run_pipeline_task(plan: Plan, cfg: RunConfig, dst: str, run_id: str) -> PipelineStats:
    # No task retries: every shard commits as it finishes, so a failed run is resumed by running
    # the flow again, which plans only what is missing.
    return run_pipeline(plan.items, cfg, dst, run_id)


@task(name="commit", retries=2, retry_delay_seconds=5)
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
            "stage_busy": dict(stats.stage_busy_s),
            "ray_operators": stats.operators,
        },
    }


def _artifact(manifest: dict[str, Any]) -> None:
    counts = manifest["counts"]
    lines = [f"# samflow run `{manifest['run_id']}`", "", "| count | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in counts.items()]
    lines += ["", f"Output: `{manifest['dst']}`"]
    create_markdown_artifact("\n".join(lines), key="samflow-annotate-run", description="samflow annotate")


@flow(name="annotate-dataset")
def annotate_dataset(
    src: str,
    dst: str,
    config: dict[str, Any] | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Annotate every new image under ``src`` into Parquet tables under ``dst``.

    Returns the run manifest; when nothing is new, returns a summary and writes nothing.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    cfg = config_from(config, profile=profile)
    run_id = new_run_id()
    plan = plan_run(src, dst, cfg)
    logger.info("run %s: %d listed, %d already done, %d to process",
                run_id, plan.listed, plan.already_done, plan.new)
    if not plan.new:
        return {"run_id": None, "counts": {"listed": plan.listed, "already_done": plan.already_done, "inputs": 0}}
    pipeline_start = time.perf_counter()
    stats = run_pipeline_task(plan, cfg, dst, run_id)
    doneset.compact_done(dst, cfg.storage)
    manifest = _manifest(src, dst, run_id, cfg, plan, stats, started, time.perf_counter() - pipeline_start)
    manifest["path"] = commit_run(manifest, cfg, dst)
    _artifact(manifest)
    logger.info("run %s done: %s", run_id, manifest["counts"])
    return manifest
