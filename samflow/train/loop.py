"""The training loop each Ray Train worker runs (`train_worker`).

Each worker loads the base model, sets its trainable parts, restores the last checkpoint when
the run has one (`ray.train.get_checkpoint`), wraps the step in DDP (`prepare_model`; gloo on
CPU) and streams its shard of the samples. After every epoch the held-out shard is scored
(summed over workers), rank 0 writes a checkpoint and every worker reports.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from samflow.train.checkpoints import (
    Progress,
    load_optimizer,
    load_trainable,
    read_progress,
    save_checkpoint,
)
from samflow.train.schedule import LrSchedule
from samflow.train.step import SamTrainStep, StepParams
from samflow.train.targets import unpack
from samflow.train.trainable import (
    Parts,
    prepare,
    sam_of,
    trainable_parameters,
    trainable_state,
)

PROGRESS_KEY = "progress_lines"  # the train_loop_config entry holding the driver's queue


@dataclass(frozen=True)
class WorkerSpec:
    base_model: str  # any model URI; s3:// and https:// ones are fetched into the node's cache
    family: str  # sam or sam2
    storage: dict[str, Any]  # StorageConfig, for fetching the base model
    parts: Parts
    step: StepParams
    epochs: int
    batch_size: int
    schedule: LrSchedule
    weight_decay: float
    low_res: int
    seed: int
    shuffle_buffer: int
    threads: int
    max_seconds: float | None  # training time after which no new step starts (from the first batch)

    def to_config(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WorkerSpec:
        return cls(**{**config, "parts": Parts(**config["parts"]), "step": StepParams(**config["step"]),
                      "schedule": LrSchedule(**config["schedule"])})


def train_worker(config: dict[str, Any]) -> None:
    import ray.train
    from ray.train.torch import prepare_model

    config = dict(config)
    say = _sayer(config.pop(PROGRESS_KEY, None))
    spec = WorkerSpec.from_config(config)
    torch.set_num_threads(spec.threads)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    model = _trainable_model(spec)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=spec.schedule.base, weight_decay=spec.weight_decay)
    progress = _restore(model, optimizer)
    if progress.epochs_done and rank == 0:
        say(f"resuming after epoch {progress.epochs_done} (from the last checkpoint)")
    step = prepare_model(SamTrainStep(sam_of(model), spec.step), parallel_strategy_kwargs={"find_unused_parameters": True})
    device = next(sam_of(model).parameters()).device
    # an epoch record counts every worker's steps
    budget = _Budget(spec.max_seconds, sum(e["steps"] for e in progress.history) // context.get_world_size())
    for epoch in range(progress.epochs_done, spec.epochs):
        started = time.time()
        generator = torch.Generator(device=device).manual_seed(spec.seed * 100_003 + epoch * 1_009 + rank)
        stats = _train_epoch(step, optimizer, spec, device, generator, epoch, rank, budget, say)
        holdout = _score(step, spec, device)
        progress.epochs_done = epoch + 1
        progress.history.append({"epoch": epoch + 1, **stats, "holdout_miou": holdout,
                                 "seconds": round(time.time() - started, 3)})
        if stats["stopped"]:
            progress.stopped = "max_minutes"
        _report(model, optimizer, progress, rank)
        if rank == 0:
            say(_epoch_line(progress.history[-1], spec.epochs))
        if progress.stopped:
            break


def _trainable_model(spec: WorkerSpec) -> torch.nn.Module:
    from samflow.config import StorageConfig
    from samflow.models.loading.cache import fetch_model
    from samflow.models.loading.registry import load_model

    local = fetch_model(spec.base_model, StorageConfig.model_validate(spec.storage))
    runner = load_model(spec.family, local, device="cuda" if torch.cuda.is_available() else "cpu",
                        dtype=torch.float32)
    model = prepare(runner.model, spec.parts)
    model.train()
    return model


def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as directory:
        load_trainable(Path(directory), model)
        load_optimizer(Path(directory), optimizer)
        progress = read_progress(Path(directory))
    progress.resumed_at.append(progress.epochs_done)
    progress.stopped = None  # a new budget: the run goes on to its last epoch
    return progress


def _batches(name: str, spec: WorkerSpec, shuffle_epoch: int | None = None):
    """The worker's shard of a split; shuffled (a new order each epoch, the same on a re-run)
    when ``shuffle_epoch`` is given."""
    import ray.train

    shard = ray.train.get_dataset_shard(name)
    buffer = spec.shuffle_buffer if shuffle_epoch is not None and spec.shuffle_buffer else None
    seed = spec.seed * 100_003 + shuffle_epoch if buffer else None
    yield from shard.iter_batches(batch_size=spec.batch_size, batch_format="numpy",
                                  local_shuffle_buffer_size=buffer, local_shuffle_seed=seed)


def _tensors(batch: dict[str, np.ndarray], low_res: int, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    pixels = torch.from_numpy(np.stack(list(batch["pixels"]))).to(device)
    masks = [torch.from_numpy(unpack(data, int(n), low_res)).to(device)
             for data, n in zip(batch["masks"], batch["num_masks"])]
    return pixels, masks


def _train_epoch(step, optimizer, spec: WorkerSpec, device, generator, epoch: int, rank: int,
                 budget: _Budget, say: Callable[[str], None]) -> dict[str, Any]:
    losses, images, stopped, started = [], 0, False, time.time()
    for index, batch in enumerate(_batches("train", spec, shuffle_epoch=epoch)):
        spent, share = _largest_over_workers(budget.spent(), budget.progress(spec.schedule))
        if spent:
            stopped = True
            break
        pixels, masks = _tensors(batch, spec.low_res, device)
        loss = step(pixels, masks, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = spec.schedule.rate(budget.steps_done, share)
        optimizer.step()
        budget.steps_done += 1
        losses.append(float(loss.detach()))
        images += len(pixels)
        if rank == 0 and (index + 1) % 10 == 0:
            rate = images / max(time.time() - started, 1e-9)
            say(f"epoch {epoch + 1}/{spec.epochs} step {index + 1} loss {np.mean(losses[-10:]):.4f} "
                 f"{rate:.2f} images/s per worker")
    seconds = time.time() - started
    total = _sum_over_workers(torch.tensor([float(sum(losses)), float(len(losses)), float(images)], dtype=torch.float64))
    return {"loss": float(total[0] / total[1]) if total[1] else None, "steps": int(total[1]),
            "images": int(total[2]), "images_per_s": round(float(total[2]) / max(seconds, 1e-9), 3),
            "stopped": stopped}


def _score(step, spec: WorkerSpec, device) -> float | None:
    module = step.module if hasattr(step, "module") else step
    module.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for batch in _batches("holdout", spec):
        total += module.score(*_tensors(batch, spec.low_res, device))
    module.train()
    total = _sum_over_workers(total)
    return float(total[0] / total[1]) if total[1] else None


def _report(model, optimizer, progress: Progress, rank: int) -> None:
    import ray.train

    metrics = {k: v for k, v in progress.history[-1].items() if v is not None}
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            save_checkpoint(Path(directory), trainable_state(model), optimizer, progress)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


class _Budget:
    """The training-time budget, counted from the first batch (not the cluster's start-up), and
    the steps taken (over resumes; a resumed run gets a new time budget)."""

    def __init__(self, seconds: float | None, steps_done: int = 0) -> None:
        self.seconds = seconds
        self.started: float | None = None
        self.steps_done = steps_done

    def elapsed(self) -> float:
        if self.started is None:
            self.started = time.time()
        return time.time() - self.started

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed() > self.seconds

    def progress(self, schedule: LrSchedule) -> float:
        return schedule.progress(self.steps_done, self.elapsed(), self.seconds)


def _largest_over_workers(flag: bool, share: float) -> tuple[bool, float]:
    """The budget flag (true when any worker's is: DDP steps stay in lockstep) and the largest
    schedule share (every replica steps at the same rate), in one collective."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag, share
    value = torch.tensor([1.0 if flag else 0.0, share], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value[0].item()), float(value[1].item())


def _sum_over_workers(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    miou = record["holdout_miou"]
    held = "n/a (no held-out items)" if miou is None or math.isnan(miou) else f"{miou:.4f}"
    return (f"epoch {record['epoch']}/{epochs}: loss {record['loss'] if record['loss'] is None else round(record['loss'], 4)}, "
            f"held-out mIoU {held}, {record['images']} images, {record['images_per_s']} images/s"
            + (" (stopped: max_minutes)" if record["stopped"] else ""))


def _sayer(lines: Any) -> Callable[[str], None]:
    """Progress lines go to the worker's log and, through ``lines`` (a Ray queue the driver
    drains), to the terminal of whoever started the run, wherever the worker runs."""

    def say(line: str) -> None:
        text = f"samflow train: {line}"
        try:
            if lines is not None:
                lines.put_nowait(text)
                return
        except Exception:  # a full or gone queue: the line goes to the worker's log only
            pass
        print(text, flush=True)

    return say
