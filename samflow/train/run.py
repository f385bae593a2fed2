"""`samflow train DST --out MODEL_URI`: the driver side of a fine-tuning run.

    result = train_model(dst, out_uri, cfg)       # cfg: RunConfig; its `train` section

Loads the base model once (its frame and hash), counts the data, starts a Ray Train
`TorchTrainer` over the Ray Data samples (`samples.sample_datasets`) with `loop.train_worker`,
then turns the last checkpoint into a model directory with its lineage (`checkpoints`) at
MODEL_URI. Checkpoints live under ``train.checkpoint_uri`` (default DST/_train/), in a folder
named after MODEL_URI: the same command run again resumes from the last epoch there.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import samflow
from samflow.config import RunConfig, StorageConfig
from samflow.errors import UserError
from samflow.store.storage import filesystem, join
from samflow.train.checkpoints import (
    LINEAGE,
    load_trainable,
    publish,
    read_progress,
    staging_dir,
    write_model_dir,
)
from samflow.train.loop import PROGRESS_KEY, WorkerSpec, train_worker
from samflow.train.samples import (
    ModelFrame,
    Reviews,
    item_counts,
    read_reviews,
    sample_datasets,
)
from samflow.train.schedule import LrSchedule, planned_steps
from samflow.train.step import StepParams
from samflow.train.trainable import Parts, merged, prepare

CHECKPOINTS = "_train"
TRAINABLE = ("sam", "sam2")  # model families `samflow train` fine-tunes


@dataclass
class BaseModel:
    uri: str
    local: str
    family: str  # sam or sam2
    sha256: str | None
    frame: ModelFrame


def train_model(dst: str, out_uri: str, cfg: RunConfig, base: str | None = None) -> dict[str, Any]:
    """Fine-tune, write MODEL_URI, return its lineage."""
    train = cfg.train
    base_model = _load_base(base or train.base_model or cfg.stages.segment.model, cfg.storage)
    reviews = read_reviews(dst, cfg.storage) if train.use_reviews else Reviews()
    data = item_counts(dst, cfg.storage, reviews, train.holdout_fraction)
    if not data["train_items"]:
        raise UserError(f"{dst}: no ground-truth or reviewed masks to train on (annotations with source "
                        "ground_truth, or reviews/); is it an annotate run's output?")
    from samflow.pipeline.graph import ensure_ray

    ensure_ray(cfg.ray)
    spec = _worker_spec(cfg, base_model, data["train_items"])
    result = _fit(dst, out_uri, cfg, spec, base_model.frame, reviews)
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        progress = read_progress(Path(directory))
        lineage = _lineage(dst, out_uri, cfg, base_model, reviews, data, progress)
        _export(Path(directory), spec, base_model, lineage, out_uri, cfg.storage)
    return lineage


def _load_base(uri: str, storage: StorageConfig) -> BaseModel:
    from samflow.models.loading.cache import fetch_model
    from samflow.models.loading.check import infer_family
    from samflow.models.loading.registry import load_model

    local = fetch_model(uri, storage)
    family = infer_family(local)
    if family not in TRAINABLE:
        raise UserError(f"train: {uri} is a {family} model; training supports {' and '.join(TRAINABLE)} models")
    runner = load_model(family, local, device="cpu", dtype=None)
    frame = ModelFrame(runner.image_size, runner.low_res_size, tuple(runner.norm.mean), tuple(runner.norm.std),
                       square=family == "sam2")
    return BaseModel(uri, local, family, runner.checkpoint_sha256, frame)


def _worker_spec(cfg: RunConfig, base: BaseModel, train_items: int) -> WorkerSpec:
    t = cfg.train
    steps = planned_steps(train_items, t.batch_size, t.num_workers, t.epochs)
    return WorkerSpec(
        base_model=base.uri, family=base.family, storage=cfg.storage.model_dump(mode="json"),
        parts=Parts(t.image_encoder, t.prompt_encoder, t.mask_decoder, t.lora_rank, t.lora_alpha),
        step=StepParams(t.masks_per_image, t.box_fraction, t.box_jitter, t.correction_rounds,
                        t.loss.focal_weight, t.loss.dice_weight, t.loss.iou_weight),
        epochs=t.epochs, batch_size=t.batch_size, weight_decay=t.weight_decay,
        schedule=LrSchedule(t.learning_rate, t.lr_schedule, t.warmup_steps, steps),
        low_res=base.frame.low_res, seed=t.seed, shuffle_buffer=t.shuffle_buffer,
        threads=t.threads_per_worker or max(1, math.ceil(t.cpus_per_worker)),
        max_seconds=60 * t.max_minutes if t.max_minutes else None,
    )


def run_name(out_uri: str) -> str:
    """The checkpoint folder of a model: one per MODEL_URI, so a re-run resumes its own."""
    return "train-" + hashlib.sha256(out_uri.rstrip("/").encode()).hexdigest()[:16]


def _storage_for_ray(uri: str, storage: StorageConfig):
    """(storage_path, pyarrow filesystem or None) for Ray Train, through samflow's fsspec settings."""
    fs, path = filesystem(uri, storage)
    if "://" not in uri or uri.startswith("file://"):
        os.makedirs(path, exist_ok=True)
        return path, None
    import pyarrow.fs

    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _fit(dst: str, out_uri: str, cfg: RunConfig, spec: WorkerSpec, frame: ModelFrame, reviews: Reviews):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    t = cfg.train
    storage_path, storage_fs = _storage_for_ray(t.checkpoint_uri or join(dst, CHECKPOINTS), cfg.storage)
    datasets = sample_datasets(dst, cfg.storage, frame, reviews, t.holdout_fraction)
    lines = Queue(maxsize=1000, actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={**spec.to_config(), PROGRESS_KEY: lines},
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker},
                                               placement_strategy=t.placement),
        run_config=ray.train.RunConfig(name=run_name(out_uri), storage_path=storage_path,
                                       storage_filesystem=storage_fs,
                                       failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
    )
    with _printing(lines):
        return trainer.fit()


@contextlib.contextmanager
def _printing(lines: Any) -> Iterator[None]:
    """Print the workers' progress lines here while the block runs (Ray's log forwarding may be
    off, and does not carry a joined driver's training workers' output)."""
    import ray

    done = threading.Event()

    def drain(block: bool) -> None:
        while True:
            try:
                print(lines.get(block=block, timeout=0.5), file=sys.stderr, flush=True)
            except Exception:  # Empty (or the queue gone): nothing to print now
                return

    def follow() -> None:
        while not done.is_set():
            drain(block=True)

    printer = threading.Thread(target=follow, daemon=True, name="train-progress")
    printer.start()
    try:
        yield
    finally:
        done.set()
        printer.join(timeout=5)
        drain(block=False)
        ray.kill(lines.actor)


def _lineage(dst: str, out_uri: str, cfg: RunConfig, base: BaseModel, reviews: Reviews, data: dict[str, int],
             progress) -> dict[str, Any]:
    return {
        "family": base.family,
        "model": out_uri,
        "base_model": base.uri,
        "base_sha256": base.sha256,
        "dst": dst,
        "reviews_version": reviews.version,
        "reviews_masks": reviews.masks,
        "data": data,
        "train_config": cfg.train.model_dump(mode="json"),
        "epochs": progress.history,
        "epochs_done": progress.epochs_done,
        "stopped": progress.stopped,
        "resumed_at": progress.resumed_at,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "samflow_version": samflow.__version__,
    }


def _export(checkpoint: Path, spec: WorkerSpec, base: BaseModel, lineage: dict[str, Any], out_uri: str,
            storage: StorageConfig) -> None:
    from samflow.models.loading.registry import load_model

    model = prepare(load_model(base.family, base.local, device="cpu", dtype=None).model, spec.parts)
    load_trainable(checkpoint, model)
    local = staging_dir()
    write_model_dir(merged(model), Path(base.local) if Path(base.local).is_dir() else None, lineage, local)
    publish(local, out_uri, storage)


__all__ = ["LINEAGE", "run_name", "train_model"]
