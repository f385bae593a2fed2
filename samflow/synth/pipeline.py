"""The Ray Data graph of one synth run: candidates -> generate (SD + ControlNet actor pool) ->
verify (segment model + CLIP actor pool) -> staged tar shards -> commits on the driver.

Pools are sized from ``synth.generate`` / ``synth.verify`` and fitted to the cluster as
annotate's stages are (GPU stages run on CPU on a local Ray without GPUs). Every shard commits
as it arrives, so a killed run keeps what it committed and a re-run does the rest.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from samflow.actors.threads import with_torch_threads
from samflow.config import RunConfig
from samflow.models.loading.cache import fetch_model
from samflow.pipeline.graph import ensure_ray, fit_to_cluster
from samflow.store.catalog import ShardResult
from samflow.synth.fidelity import FidelityStage
from samflow.synth.generate import GenerateStage
from samflow.synth.settings import SynthPoolConfig
from samflow.synth.store import SynthStore
from samflow.synth.tars import stage_shard

ShardHook = Callable[[ShardResult, dict[str, list[dict[str, Any]]]], None]


@dataclass
class SynthStats:
    candidates: int = 0
    kept: int = 0
    dropped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    shards: int = 0
    busy_s: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "verify": 0.0})
    models: dict[str, str] = field(default_factory=dict)
    first_commit_at: float = 0.0
    last_commit_at: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.shards += 1
        self.candidates += len(row["keys"])
        self.kept += row["kept"]
        self.dropped += row["dropped"]
        self.reasons.update(dict(row["reasons"]))
        self.busy_s["generate"] += row["generate_s"]
        self.busy_s["verify"] += row["verify_s"]
        self.models.update(dict(row["models"]))
        self.last_commit_at = time.time()
        self.first_commit_at = self.first_commit_at or self.last_commit_at


def settings(cfg: RunConfig) -> dict[str, Any]:
    """What the generation stage needs besides its models."""
    return cfg.synth.model_dump(include={"negative_prompt", "steps", "guidance_scale", "conditioning_scale",
                                         "short_side", "max_side", "jpeg_quality", "save_conditions", "dtype"})


@dataclass(frozen=True)
class SynthStage:
    """One actor pool of the graph (what ``fit_to_cluster`` reads of a stage: name and pool)."""

    name: str
    cls: type
    kwargs: dict[str, Any]
    config: SynthPoolConfig


def synth_stages(cfg: RunConfig) -> list[SynthStage]:
    synth = cfg.synth
    fetch = functools.partial(fetch_model, storage=cfg.storage)
    segment, embed = cfg.stages.segment, cfg.stages.embed
    return [
        SynthStage("generate", GenerateStage, {
            "model_uri": synth.model, "controlnet_uri": synth.controlnet, "settings": settings(cfg), "fetch": fetch,
        }, synth.generate),
        SynthStage("verify", FidelityStage, {
            "segment_uri": segment.model, "clip_uri": embed.model, "min_fidelity": synth.min_fidelity,
            "min_clip_score": synth.min_clip_score, "fetch": fetch,
            "hashes": {"segment": segment.model_sha256, "clip": embed.model_sha256},
        }, synth.verify),
    ]


def build_dataset(candidates: pa.Table, cfg: RunConfig, syn: str, run_id: str) -> ray.data.Dataset:
    stages = synth_stages(cfg)
    fit = fit_to_cluster(cfg, stages)  # type: ignore[arg-type]  # duck-typed: name and pool
    step = cfg.synth.generate.batch_size
    ds = ray.data.from_arrow([candidates.slice(i, step) for i in range(0, candidates.num_rows, step)])
    for stage in stages:
        placement = fit.stages[stage.name]
        low, high = stage.config.concurrency
        stage_cls = with_torch_threads(stage.cls, stage.config.num_threads, stage.config.num_cpus)
        ds = ds.map_batches(stage_cls, fn_constructor_kwargs=stage.kwargs, batch_format="pyarrow",
                            batch_size=stage.config.batch_size, num_gpus=placement.num_gpus or None,
                            num_cpus=placement.num_cpus, compute=ActorPoolStrategy(min_size=low, max_size=max(low, high)))
    ds.context.op_resource_reservation_ratio = fit.reservation_ratio
    extra = {"model": cfg.synth.model, "controlnet": cfg.synth.controlnet, "negative_prompt": cfg.synth.negative_prompt}
    return ds.map_batches(stage_shard, fn_kwargs={"syn": syn, "storage": cfg.storage, "run_id": run_id, "extra": extra},
                          batch_size=cfg.synth.shard_rows, batch_format="pyarrow", num_cpus=fit.write_cpus)


def run_synth(candidates: pa.Table, cfg: RunConfig, syn: str, run_id: str,
              on_commit: ShardHook | None = None, before_commit: Callable[[], None] | None = None) -> SynthStats:
    """Generate, check and commit every candidate; ``before_commit()`` before each shard's
    commit (the lease's check: it raises to stop the run), ``on_commit`` after (progress)."""
    stats = SynthStats()
    if candidates.num_rows == 0:
        return stats
    ensure_ray(cfg.ray)
    store = SynthStore(syn, cfg.storage)
    for row in build_dataset(candidates, cfg, syn, run_id).iter_rows():
        counts = {"kept": row["kept"], "dropped": row["dropped"]}
        if before_commit is not None:
            before_commit()
        store.commit(run_id, row["shard"], list(row["keys"]), counts)
        stats.add(row)
        if on_commit is not None:
            on_commit(ShardResult(shard=row["shard"], uris=list(row["keys"]), rows=counts), {})
    store.finish(run_id)
    return stats
