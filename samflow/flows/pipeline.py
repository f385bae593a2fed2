"""The Ray Data graph of one run: read+decode -> model stages -> staged shards -> commits.

The driver consumes the stream of staged shards and commits each one as it arrives, so a run
killed midway keeps everything committed so far and a re-run picks up the rest.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from samflow.actors.decode import DecodeStage
from samflow.actors.embed import EmbedStage
from samflow.actors.propose import ProposeStage
from samflow.actors.segment import SegmentStage
from samflow.actors.upscale import UpscaleStage
from samflow.flows.catalog import Catalog, ShardResult
from samflow.flows.config import RayConfig, RunConfig, StageConfig
from samflow.flows.storage import StorageSource
from samflow.flows.upscaled import UpscaledWriter
from samflow.schemas.ids import shard_id
from samflow.schemas.rows import build_tables

log = logging.getLogger(__name__)

DECODE_BATCH = 8
LOCAL_MIN_CPUS = 6


@dataclass
class PipelineStats:
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    shards: int = 0
    stage_busy_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, result: ShardResult, meta: dict[str, list[dict[str, Any]]]) -> None:
        self.shards += 1
        for table, count in result.rows.items():
            self.rows[table] += count
        for stage, batches in meta.items():
            for info in batches:
                self.stage_busy_s[stage] += info["busy_s"]
                self.models[stage] = {k: info[k] for k in ("model", "checkpoint_sha256") if k in info}


def ensure_ray(cfg: RayConfig) -> None:
    """Join the configured cluster (or the one a Ray Job runs in), else start a local Ray."""
    if ray.is_initialized():
        return
    runtime_env = cfg.runtime_env or None
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.address, runtime_env=runtime_env)
    else:
        # Every stage holds at least one logical CPU; on a small machine they must all fit at
        # once or the stream stalls, so a local Ray gets at least LOCAL_MIN_CPUS logical CPUs.
        cpus = max(LOCAL_MIN_CPUS, os.cpu_count() or 1)
        ray.init(address="local", num_cpus=cpus, runtime_env=runtime_env, include_dashboard=False)


def gpus_usable(cfg: RayConfig) -> bool:
    """Whether GPU requests go to Ray as they are: the cluster has GPUs, or it may get some
    (see ``ray.cpu_fallback``)."""
    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    fallback = cfg.cpu_fallback
    if fallback is None:  # auto: a joined cluster may add GPU nodes on demand
        fallback = not (cfg.address or os.environ.get("RAY_ADDRESS"))
    return not fallback


def _pool(name: str, stage: StageConfig, gpus_present: bool) -> dict[str, Any]:
    """map_batches arguments of one model stage's actor pool. Without ``gpus_present`` a stage
    asking for GPUs runs on CPU (same code; the model picks its device) instead of waiting
    forever for a GPU."""
    low, high = stage.concurrency
    num_gpus = stage.num_gpus if gpus_present else 0.0
    if stage.num_gpus and not num_gpus:
        log.warning("no GPU in the Ray cluster: stage %s (num_gpus=%s) runs on CPU", name, stage.num_gpus)
    return {
        "batch_size": stage.batch_size,
        "num_gpus": num_gpus or None,
        "num_cpus": stage.num_cpus,
        "compute": ActorPoolStrategy(min_size=low, max_size=max(low, high)),
    }


@dataclass(frozen=True)
class ModelStage:
    """One enabled model stage of the graph: its callable class, constructor kwargs and pool."""

    name: str
    cls: type
    kwargs: dict[str, Any]
    config: StageConfig


def model_stages(cfg: RunConfig, dst: str) -> list[ModelStage]:
    """The enabled model stages, in graph order: upscale -> propose -> segment -> embed."""
    stages = cfg.stages
    up, prop, seg, emb = stages.upscale, stages.propose, stages.segment, stages.embed
    candidates = [
        ModelStage("upscale", UpscaleStage, {
            "model_uri": up.model, "min_short_side": up.min_short_side,
            "max_output_pixels": up.max_output_pixels, "tile": up.tile,
            "save": UpscaledWriter(dst, cfg.storage) if up.save else None,
        }, up),
        ModelStage("propose", ProposeStage, {
            "model_uri": prop.model, "max_boxes": prop.max_boxes, "score_thresh": prop.score_thresh,
            "nms_iou": prop.nms_iou, "queries": list(prop.queries),
        }, prop),
        ModelStage("segment", SegmentStage, {"model_uri": seg.model, "engine": cfg.engine.model_dump()}, seg),
        ModelStage("embed", EmbedStage, {
            "model_uri": emb.model, "vocabulary": list(cfg.labels.vocabulary),
            "templates": list(cfg.labels.templates), "mask_embeddings": emb.mask_embeddings,
            "crops_per_batch": emb.crops_per_batch,
        }, emb),
    ]
    return [stage for stage in candidates if stage.config.enabled]


def build_dataset(items: list[dict[str, Any]], cfg: RunConfig, dst: str, run_id: str) -> ray.data.Dataset:
    ds = ray.data.from_items(items)
    # Decode holds no model: stateless tasks that Ray Data spreads over the CPUs the model pools
    # leave free (an actor pool here can starve, or be scaled away, on a small machine).
    ds = ds.map_batches(
        DecodeStage(StorageSource(cfg.storage), cfg.input),
        batch_size=DECODE_BATCH,
        batch_format="numpy",
        num_cpus=1,
    )
    gpus = gpus_usable(cfg.ray)
    for stage in model_stages(cfg, dst):
        pool = _pool(stage.name, stage.config, gpus)
        ds = ds.map_batches(stage.cls, fn_constructor_kwargs=stage.kwargs, batch_format="numpy", **pool)
    ds = ds.drop_columns(["pixels"])
    embed_model = cfg.stages.embed.model if cfg.stages.embed.enabled else None
    return ds.map_batches(
        stage_shard,
        fn_kwargs={"dst": dst, "storage": cfg.storage, "run_id": run_id, "embed_model": embed_model},
        batch_size=cfg.output.shard_rows,
        batch_format="numpy",
        num_cpus=0.5,
    )


def stage_shard(
    batch: dict[str, np.ndarray], *, dst: str, storage: Any, run_id: str, embed_model: str | None
) -> dict[str, np.ndarray]:
    """Write one batch's rows of every table to the staging area; return what the driver commits."""
    uris = sorted({str(u) for u in batch["uri"]})
    shard = shard_id(uris)
    catalog = Catalog(dst, storage)
    rows: dict[str, int] = {}
    for table, data in build_tables(batch, run_id, embed_model).items():
        rows[table] = data.num_rows
        if data.num_rows:
            buffer = io.BytesIO()
            pq.write_table(data, buffer, compression="zstd")
            path = catalog.staged_path(run_id, table, shard)
            catalog.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            catalog.fs.pipe_file(path, buffer.getvalue())
    meta = {
        column[len("_meta_"):]: sorted({str(v) for v in batch[column]})
        for column in batch
        if column.startswith("_meta_")
    }
    return {
        "shard": np.array([shard], dtype=object),
        "uris": np.array([json.dumps(uris)], dtype=object),
        "rows": np.array([json.dumps(rows)], dtype=object),
        "meta": np.array([json.dumps(meta)], dtype=object),
    }


def run_pipeline(
    items: list[dict[str, Any]], cfg: RunConfig, dst: str, run_id: str
) -> PipelineStats:
    """Run the graph over ``items`` ({uri, size}) and commit every shard as it is staged."""
    stats = PipelineStats()
    if not items:
        return stats
    ensure_ray(cfg.ray)
    catalog = Catalog(dst, cfg.storage)
    for row in build_dataset(items, cfg, dst, run_id).iter_rows():
        result = ShardResult(
            shard=str(row["shard"]), uris=json.loads(row["uris"]), rows=json.loads(row["rows"])
        )
        catalog.commit(run_id, result)
        meta = {stage: [json.loads(v) for v in values] for stage, values in json.loads(row["meta"]).items()}
        stats.add(result, meta)
        log.info("committed shard %s: %s", result.shard, result.rows)
    catalog.finish_run(run_id)
    return stats
