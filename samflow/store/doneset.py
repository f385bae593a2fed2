"""The done-set: which item keys DST has committed, as a Parquet table, and the plan's
anti-join against it, both in Ray (the driver never holds every key).

    DST/_done/<shard>.parquet          keys a shard committed (written with the shard, moved
                                       into place before its marker: committed with it)
    DST/_done/bucket=<b>/*.parquet     the same keys compacted, partitioned by bucket
    DST/_plan/<tag>/bucket=<b>/...     one plan's input keys, partitioned the same way (deleted
                                       when the plan is done)

A key's bucket is a stable hash of its container (tar or Parquet file) or, for a loose item, of
the key itself, so every member of a container lands in one bucket and the pipeline reads each
container once. The anti-join runs one Ray task per bucket: that bucket's input keys against that
bucket's done keys (both a fraction of the whole), with Arrow's ``is_in``.
"""

from __future__ import annotations

import posixpath
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from samflow.config import StorageConfig
from samflow.inputs.formats import container_of
from samflow.store.catalog import Catalog
from samflow.store.storage import filesystem

DONE = "_done"
PLAN = "_plan"
BUCKETS = 32
_HASH_KEY = "samflow-doneset1"  # 16 bytes: pandas' stable SipHash key (never change it)


def done_table(keys: list[str], containers: list[str]) -> pa.Table:
    """What a write task stages next to a shard's tables: one row per input key it finished."""
    return pa.table({"key": pa.array(keys, pa.string()), "container": pa.array(containers, pa.string())})


def with_bucket(table: pa.Table) -> pa.Table:
    """``table`` (``key``, ``container``) plus its ``bucket`` column."""
    keys = table.column("key").to_numpy(zero_copy_only=False).astype(object)
    containers = table.column("container").fill_null("").to_numpy(zero_copy_only=False).astype(object)
    group = np.where(containers != "", containers, keys)
    hashed = pd.util.hash_array(group, hash_key=_HASH_KEY, categorize=False)
    return table.append_column("bucket", pa.array((hashed % BUCKETS).astype(np.int32)))


@dataclass
class PlanResult:
    todo: ray.data.Dataset  # key rows still to do (materialized)
    listed: int  # key rows the input has
    new: int
    seconds: float

    @property
    def done(self) -> int:
        return self.listed - self.new


def plan(
    keys: ray.data.Dataset, dst: str, storage: StorageConfig, committed: set[str], read_only: bool = False,
    shape: Callable[[ray.data.Dataset, int], ray.data.Dataset] | None = None,
) -> PlanResult:
    """Anti-join ``keys`` against the committed done keys. The per-shard done files are first
    compacted into the bucketed table, or, ``read_only`` (``samflow plan``), bucketed into the
    plan's own temporary folder, leaving DST's table as it is. ``shape(todo, listed)`` turns the
    keys still to do into what the run streams before they are materialized."""
    start = time.perf_counter()
    catalog = Catalog(dst, storage)
    arrow_fs = _arrow_fs(dst, storage)
    tag = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    staged = catalog.path(PLAN, tag, "keys")
    done_roots = [catalog.path(DONE)]
    try:
        if read_only:
            done_roots.append(catalog.path(PLAN, tag, "done"))
        adopt_markers(catalog, arrow_fs, committed, into=done_roots[-1])
        compact(catalog, arrow_fs, committed, into=done_roots[-1], delete=not read_only)
        keys.map_batches(with_bucket, batch_format="pyarrow", zero_copy_batch=True).write_parquet(
            staged, partition_cols=["bucket"], filesystem=arrow_fs
        )
        buckets = _buckets(catalog, staged)
        listed = _count_rows(arrow_fs, staged) if buckets else 0
        tasks = ray.data.from_items([{"bucket": b} for b in buckets], override_num_blocks=max(1, len(buckets)))
        todo = tasks.map_batches(AntiJoin(done_roots, staged, dst, storage), batch_size=1, batch_format="pyarrow")
        todo = (shape(todo, listed) if shape is not None else todo).materialize()
        new = todo.count()
    finally:
        if catalog.fs.exists(catalog.path(PLAN, tag)):
            catalog.fs.rm(catalog.path(PLAN, tag), recursive=True)
        _remove_if_empty(catalog, catalog.path(PLAN))
    return PlanResult(todo=todo, listed=listed, new=new, seconds=time.perf_counter() - start)


def compact_done(dst: str, storage: StorageConfig) -> int:
    """After a run: fold the committed per-shard done files into the bucketed table, so the next
    plan reads few files. Returns how many were folded."""
    catalog = Catalog(dst, storage)
    return compact(catalog, _arrow_fs(dst, storage), catalog.committed_names(), catalog.path(DONE), delete=True)


def compact(
    catalog: Catalog, arrow_fs: pafs.FileSystem, committed: set[str], into: str, delete: bool
) -> int:
    """Copy committed per-shard done files, bucketed, under ``into`` (and ``delete`` them);
    returns how many. A kill between writing and deleting leaves keys twice, which the
    anti-join does not mind."""
    folder = catalog.path(DONE)
    shard_files = [
        path for path in catalog._ls(folder, suffix=".parquet")
        if posixpath.basename(path)[: -len(".parquet")] in committed
    ]
    if not shard_files:
        return 0
    ds = ray.data.read_parquet(shard_files, filesystem=arrow_fs).select_columns(["key", "container"])
    ds.map_batches(with_bucket, batch_format="pyarrow").write_parquet(
        into, partition_cols=["bucket"], filesystem=arrow_fs
    )
    if delete:
        catalog.fs.rm(shard_files)
    return len(shard_files)


def adopt_markers(catalog: Catalog, arrow_fs: pafs.FileSystem, committed: set[str], into: str) -> int:
    """Output written before the done table existed: its keys from the commit markers, once
    (on the driver: older outputs are small). Returns how many keys."""
    if not committed or catalog.fs.exists(catalog.path(DONE)):
        return 0
    keys = sorted(catalog.done_uris(catalog.committed_shards()))
    table = with_bucket(done_table(keys, [container_of(key) for key in keys]))
    pq.write_to_dataset(table, into, partition_cols=["bucket"], filesystem=arrow_fs,
                        basename_template="markers-{i}.parquet")
    return len(keys)


class AntiJoin:
    """One bucket: its input keys (duplicates dropped) that are not in its done keys."""

    def __init__(self, done_roots: list[str], plan_root: str, dst: str, storage: StorageConfig) -> None:
        self.done_roots, self.plan_root = done_roots, plan_root
        self.dst, self.storage = dst, storage

    def __call__(self, batch: pa.Table) -> pa.Table:
        fs = _arrow_fs(self.dst, self.storage)
        bucket = int(batch.column("bucket")[0].as_py())
        keys = _read(fs, posixpath.join(self.plan_root, f"bucket={bucket}"))
        keys = keys.drop_columns([c for c in ("bucket",) if c in keys.column_names])
        keys = _first_of_each(keys)
        for root in self.done_roots:
            done = _read(fs, posixpath.join(root, f"bucket={bucket}"), ["key"])
            if done is not None and done.num_rows:
                keys = keys.filter(pc.invert(pc.is_in(keys.column("key"), value_set=done.column("key"))))
        return keys


def _first_of_each(table: pa.Table) -> pa.Table:
    """Rows with a key seen before (a manifest listing one uri twice) dropped."""
    _, first = np.unique(table.column("key").to_numpy(zero_copy_only=False).astype(object), return_index=True)
    return table.take(pa.array(np.sort(first)))


def _read(fs: pafs.FileSystem, folder: str, columns: list[str] | None = None) -> pa.Table | None:
    info = fs.get_file_info(folder)
    if info.type != pafs.FileType.Directory:
        return None
    return pads.dataset(folder, filesystem=fs, format="parquet").to_table(columns=columns)


def _buckets(catalog: Catalog, staged: str) -> list[int]:
    catalog.fs.invalidate_cache(staged)
    if not catalog.fs.exists(staged):
        return []
    names = [posixpath.basename(p.rstrip("/")) for p in catalog.fs.ls(staged, detail=False)]
    return sorted(int(n.split("=", 1)[1]) for n in names if n.startswith("bucket="))


def _count_rows(fs: pafs.FileSystem, folder: str) -> int:
    return pads.dataset(folder, filesystem=fs, format="parquet", partitioning="hive").count_rows()


def _remove_if_empty(catalog: Catalog, folder: str) -> None:
    if catalog.fs.exists(folder) and not catalog.fs.ls(folder, detail=False):
        catalog.fs.rmdir(folder)


def _arrow_fs(uri: str, storage: StorageConfig) -> pafs.FileSystem:
    fs, _ = filesystem(uri, storage)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
