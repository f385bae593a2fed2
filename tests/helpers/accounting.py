"""Helpers of the reliability and multi-node tests: a small local dataset with a poisoned image,
and the exactly-once check of an output store (every input once, nothing twice, nothing stray)."""

from __future__ import annotations

import posixpath
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

from samflow.config import RunConfig, StorageConfig, load_config
from samflow.schemas.tables import TABLES
from samflow.store.catalog import COMMITS, STAGING, Catalog
from samflow.store.storage import list_files

# A valid one-pixel-tall banner: SAM's resize to its square input gives it zero rows, so the
# model raises on it (a real input that fails a whole model batch, not a decode error).
POISON_NAME = "banner_1x3000.png"
NOT_AN_IMAGE = "notes.png"


def write_dataset(folder: Path, n_images: int, seed: int = 0) -> dict[str, Any]:
    """``n_images`` small scenes (a few boxes on a gradient, 64 to 128 pixels a side, so the tiny
    models are quick), one poisoned banner and one text file named like a PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_images):
        Image.fromarray(_small_scene(rng)).save(folder / f"scene_{index:03d}.png")
    Image.fromarray(rng.integers(0, 255, (1, 3000, 3), dtype=np.uint8)).save(folder / POISON_NAME)
    (folder / NOT_AN_IMAGE).write_text("this is not an image\n")
    return {"src": str(folder), "inputs": n_images + 2}


def _small_scene(rng: np.random.Generator) -> np.ndarray:
    height, width = (int(v) for v in rng.integers(64, 129, size=2))
    ramp = np.linspace(30, 200, width, dtype=np.float32)[None, :, None]
    image = np.broadcast_to(ramp, (height, width, 3)).copy()
    for _ in range(3):
        y, x = rng.integers(0, height - 16), rng.integers(0, width - 16)
        image[y : y + rng.integers(8, 32), x : x + rng.integers(8, 32)] = rng.uniform(0, 255, size=3)
    return image.astype(np.uint8)


def tiny_config(*overrides: str) -> RunConfig:
    """The tiny profile, small shards and one image per model batch: many shards and batches
    from few images, so a failure injected mid-run lands between commits."""
    base = ["output.shard_rows=2", "stages.segment.batch_size=1", "stages.embed.batch_size=2"]
    return load_config(profile="tiny", overrides=[*base, *overrides])


def plan_items(src: str, cfg: RunConfig) -> list[dict[str, Any]]:
    return [
        {"uri": uri, "size": size}
        for uri, size in list_files(src, cfg.storage, cfg.input.include, cfg.input.exclude)
    ]


def assert_exactly_once(dst: str, input_uris: list[str], embedded: bool = True) -> dict[str, Any]:
    """Every input is one image row or one error row, no id appears twice, every table file
    belongs to a committed shard, and nothing is left staged. Returns the tables as row lists."""
    catalog = Catalog(dst, StorageConfig())
    tables = {name: _rows(catalog, name) for name in TABLES}
    images, errors = tables["images"], tables["errors"]
    uris = [r["uri"] for r in images] + [r["uri"] for r in errors]
    assert len(uris) == len(set(uris)), f"duplicate rows: {_duplicates(uris)}"
    assert sorted(uris) == sorted(input_uris), "inputs != image rows + error rows"
    for table, key in (("images", "item_id"), ("annotations", "annotation_id"), ("embeddings", "item_id")):
        ids = [r[key] for r in tables[table]]
        assert len(ids) == len(set(ids)), f"duplicate {key} in {table}: {_duplicates(ids)}"
    if embedded:
        assert sorted(r["item_id"] for r in tables["embeddings"]) == sorted(r["item_id"] for r in images)
    committed = catalog.shard_names(catalog.committed_shards())
    for table in TABLES:
        for path in catalog._ls(catalog.path(table), suffix=".parquet"):
            shard = posixpath.basename(path)[: -len(".parquet")]
            assert shard in committed, f"{path} belongs to no committed shard"
    assert not catalog.fs.exists(catalog.path(STAGING)) or not catalog.fs.find(catalog.path(STAGING))
    assert catalog._ls(catalog.path(COMMITS), suffix=".tmp", hidden=True) == []
    return tables


def _rows(catalog: Catalog, table: str) -> list[dict[str, Any]]:
    data = catalog.read_table(table)
    return [] if data is None else data.to_pylist()


def _duplicates(values: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({v for v in values if v in seen or seen.add(v)})


class WhenBusy:
    """Call ``action(process)`` once, ``delay_s`` after the first process under one of
    ``root_pids`` is seen running a task of ``actor_part`` (Ray titles a busy actor process
    ``ray::<Class>.<method>``): a failure injected while the actor is in the middle of its
    batches. ``hit`` is that process's pid."""

    def __init__(self, root_pids: list[int], actor_part: str, action: Callable[[psutil.Process], None],
                 delay_s: float = 1.0) -> None:
        self.root_pids = root_pids
        self.actor_part = actor_part
        self.action = action
        self.delay_s = delay_s
        self.hit: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "WhenBusy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            busy = self._busy_process()
            if busy is not None:
                time.sleep(self.delay_s)
                self.action(busy)
                self.hit = busy.pid
                return

    def _busy_process(self) -> psutil.Process | None:
        for root in self.root_pids:
            try:
                processes = psutil.Process(root).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for process in processes:
                try:
                    title = " ".join(process.cmdline())
                except psutil.Error:
                    continue
                if self.actor_part in title and ".submit" in title:
                    return process
        return None


def sigkill(process: psutil.Process) -> None:
    process.send_signal(signal.SIGKILL)
