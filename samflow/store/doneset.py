"""The done-set: which item keys DST has committed, as a Parquet table, and the plan's
anti-join against it, both in Ray (the driver never holds every key).

    DST/_done/<shard>.parquet          keys a shard committed (written with the shard, moved
                                       into place before its marker: committed with it)
    DST/_done/bucket=<b>/*.parquet     the same keys compacted, partitioned by bucket

A key's bucket is a stable hash of its container (tar or Parquet file) or, for a loose item, of
the key itself, so every member of a container lands in one bucket and the pipeline reads each
container once. The anti-join runs one Ray task per bucket: that bucket's input keys against that
bucket's done keys (both a fraction of the whole), with Arrow's ``is_in``. A plan writes nothing:
the keys meet their bucket in Ray's object store (``samflow plan`` is a dry run).
"""

from __future__ import annotations

import math
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from samflow.config import StorageConfig
from samflow.inputs.formats import KEY_SCHEMA, container_of
from samflow.store.catalog import Catalog
from samflow.store.storage import cat_whole, filesystem

DONE = "_done"
BUCKETS = 32
# Up to this many input keys the plan joins them in this process (a nightly increment: a shuffle's
# start costs more than the join); beyond it, in Ray, one reducer per this many keys.
KEYS_JOINED_HERE = 50_000
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
    members: dict[str, int] = field(default_factory=dict)  # key rows listed per container, when asked

    @property
    def done(self) -> int:
        return self.listed - self.new


def plan(
    keys: ray.data.Dataset | pa.Table, dst: str, storage: StorageConfig, committed: set[str],
    shape: Callable[[ray.data.Dataset | pa.Table, int], ray.data.Dataset] | None = None, members: bool = False,
) -> PlanResult:
    """Anti-join ``keys`` against the committed done keys, writing nothing to DST: the input keys
    and the done keys not yet compacted meet per bucket in Ray's object store (a groupby), where
    each bucket's task also reads that bucket of DST's compacted done table. ``shape(todo,
    listed)`` turns the keys still to do into what the run streams before they are materialized;
    ``members``: also count the key rows listed per container.

    ``keys`` held here (a table, the driver's listing) of at most ``KEYS_JOINED_HERE`` rows are
    joined here without Ray tasks (``shape`` then gets a table): the same rows in the same order
    as the tasks would give, without their worker processes' start (several seconds on a small
    machine, before the run's first model batch)."""
    start = time.perf_counter()
    catalog = Catalog(dst, storage)
    if isinstance(keys, pa.Table):
        if keys.num_rows <= KEYS_JOINED_HERE:
            return _plan_here(keys, dst, storage, committed, catalog, shape, members, start)
        keys = ray.data.from_arrow(keys)
    bucketed = keys.map_batches(with_bucket, batch_format="pyarrow", zero_copy_batch=True).materialize()
    listed = bucketed.count()
    todo = bucketed.map_batches(_without_bucket, batch_format="pyarrow")
    if listed:
        sides = [bucketed.map_batches(_side, fn_kwargs={"done": False}, batch_format="pyarrow")]
        pending = _pending_done(catalog, storage, committed)
        if pending is not None:
            sides.append(pending.map_batches(_side, fn_kwargs={"done": True}, batch_format="pyarrow"))
        joined = sides[0].union(*sides[1:]) if len(sides) > 1 else sides[0]
        join_kwargs = {"done_root": catalog.path(DONE), "dst": dst, "storage": storage}
        if listed <= KEYS_JOINED_HERE:
            todo = ray.data.from_arrow(_join_here(joined, join_kwargs))
        else:
            # a group is one bucket whatever the partition count
            partitions = max(1, min(BUCKETS, math.ceil(listed / KEYS_JOINED_HERE)))
            todo = joined.groupby("bucket", num_partitions=partitions).map_groups(
                anti_join, fn_kwargs=join_kwargs, batch_format="pyarrow")
    todo = (shape(todo, listed) if shape is not None else todo).materialize()
    counts = _members(bucketed) if members and listed else {}
    return PlanResult(todo=todo, listed=listed, new=todo.count(), seconds=time.perf_counter() - start, members=counts)


def _plan_here(
    keys: pa.Table, dst: str, storage: StorageConfig, committed: set[str], catalog: Catalog,
    shape: Callable[[ray.data.Dataset | pa.Table, int], ray.data.Dataset] | None, members: bool, start: float,
) -> PlanResult:
    """:func:`plan` of a key table held here: the same steps on the table, in this process (done
    keys not yet compacted are still read by Ray tasks, as in the join in Ray)."""
    bucketed = with_bucket(keys)
    listed = bucketed.num_rows
    todo: pa.Table = _without_bucket(bucketed)
    if listed:
        sides = [_side(bucketed, done=False)]
        pending = _pending_done(catalog, storage, committed)
        if pending is not None:
            done = pending.map_batches(_side, fn_kwargs={"done": True}, batch_format="pyarrow")
            sides.extend(ray.get(done.to_arrow_refs()))
        rows = pa.concat_tables(sides)
        todo = _join_rows(rows, {"done_root": catalog.path(DONE), "dst": dst, "storage": storage})
    shaped = shape(todo, listed) if shape is not None else ray.data.from_arrow(todo)
    counts = _members_here(bucketed) if members and listed else {}
    return PlanResult(todo=shaped.materialize(), listed=listed, new=shaped.count(),
                      seconds=time.perf_counter() - start, members=counts)


def _members_here(bucketed: pa.Table) -> dict[str, int]:
    counts = bucketed.select(["container"]).group_by("container").aggregate([([], "count_all")])
    return {c: int(n) for c, n in zip(counts.column("container").to_pylist(), counts.column("count_all").to_pylist())
            if c}


def _members(bucketed: ray.data.Dataset) -> dict[str, int]:
    rows = bucketed.select_columns(["container"]).groupby("container").count().take_all()
    return {row["container"]: int(row["count()"]) for row in rows if row["container"]}


def _pending_done(catalog: Catalog, storage: StorageConfig, committed: set[str]) -> ray.data.Dataset | None:
    """Done keys DST has committed outside its compacted table, bucketed: per-shard done files
    not yet folded in, or, for output written before the done table existed, the markers' URIs."""
    if committed and not catalog.fs.exists(catalog.path(DONE)):
        keys = sorted(catalog.done_uris(catalog.committed_shards()))
        return ray.data.from_arrow(with_bucket(done_table(keys, [container_of(key) for key in keys])))
    shard_files = _committed_shard_files(catalog, committed)
    if not shard_files:
        return None
    # One GET a file (cat_whole): Ray's Parquet reader would first ask for each file's size and footer.
    paths = ray.data.from_items([{"path": p} for p in shard_files], override_num_blocks=min(len(shard_files), BUCKETS))
    done = paths.map_batches(_read_done_files, fn_kwargs={"dst": catalog.dst, "storage": storage},
                             batch_format="pyarrow")
    return done.map_batches(with_bucket, batch_format="pyarrow")


def _read_done_files(batch: pa.Table, dst: str, storage: StorageConfig) -> pa.Table:
    fs, _ = filesystem(dst, storage)
    columns = ["key", "container"]
    tables = [pq.read_table(pa.BufferReader(cat_whole(fs, p)), columns=columns) for p in batch.column("path").to_pylist()]
    return pa.concat_tables(tables) if tables else done_table([], [])


def _side(batch: pa.Table, done: bool) -> pa.Table:
    """Input key rows (``done`` false) and done key rows in one schema, told apart by ``_done``."""
    n = batch.num_rows
    columns = {column.name: batch.column(column.name) if column.name in batch.column_names else pa.nulls(n, column.type)
               for column in KEY_SCHEMA}
    columns["bucket"] = batch.column("bucket")
    columns["_done"] = pa.array([done] * n, pa.bool_())
    return pa.table(columns)


def _without_bucket(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([c for c in ("bucket", "_done") if c in batch.column_names])


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
    shard_files = _committed_shard_files(catalog, committed)
    if not shard_files:
        return 0
    ds = ray.data.read_parquet(shard_files, filesystem=arrow_fs).select_columns(["key", "container"])
    ds.map_batches(with_bucket, batch_format="pyarrow").write_parquet(
        into, partition_cols=["bucket"], filesystem=arrow_fs
    )
    if delete:
        catalog.fs.rm(shard_files)
    return len(shard_files)


def _committed_shard_files(catalog: Catalog, committed: set[str]) -> list[str]:
    """Per-shard done files (``_done/<shard>.parquet``) of committed shards."""
    return [
        path for path in catalog._ls(catalog.path(DONE), suffix=".parquet")
        if posixpath.basename(path)[: -len(".parquet")] in committed
    ]


def anti_join(group: pa.Table, done_root: str, dst: str, storage: StorageConfig) -> pa.Table:
    """One bucket's group: its input keys (duplicates dropped) that are neither among the group's
    done rows nor in the bucket's part of the compacted done table under ``done_root``."""
    is_done = group.column("_done")
    keys = _first_of_each(_without_bucket(group.filter(pc.invert(is_done))))
    done = [group.filter(is_done).column("key")]
    if keys.num_rows:
        bucket = int(group.column("bucket")[0].as_py())
        done.extend(_bucket_keys(dst, storage, posixpath.join(done_root, f"bucket={bucket}")))
    for column in done:
        if len(column) and keys.num_rows:
            keys = keys.filter(pc.invert(pc.is_in(keys.column("key"), value_set=column)))
    return keys


def _join_here(joined: ray.data.Dataset, join_kwargs: dict) -> pa.Table:
    """:func:`anti_join` of every bucket, in this process."""
    return _join_rows(pa.concat_tables(ray.get(joined.to_arrow_refs())), join_kwargs)


def _join_rows(rows: pa.Table, join_kwargs: dict) -> pa.Table:
    """:func:`anti_join` of every bucket of ``rows`` (input and done key rows, ``_side``)."""
    buckets = rows.column("bucket")
    parts = [anti_join(rows.filter(pc.equal(buckets, bucket)), **join_kwargs)
             for bucket in pc.unique(buckets).to_pylist()]
    return pa.concat_tables(parts) if parts else _without_bucket(rows.slice(0, 0))


def _first_of_each(table: pa.Table) -> pa.Table:
    """Rows with a key seen before (a manifest listing one uri twice) dropped."""
    _, first = np.unique(table.column("key").to_numpy(zero_copy_only=False).astype(object), return_index=True)
    return table.take(pa.array(np.sort(first)))


def _bucket_keys(dst: str, storage: StorageConfig, folder: str) -> list[pa.ChunkedArray]:
    """The ``key`` column of each file of one bucket of the compacted done table: one listing and
    one GET per file (a dataset scan would ask for each file's size and footer first)."""
    fs, _ = filesystem(dst, storage)
    try:
        paths = [p for p in fs.ls(folder, detail=False) if p.endswith(".parquet")]
    except FileNotFoundError:
        return []
    if not paths:
        return []
    return [pq.read_table(pa.BufferReader(cat_whole(fs, p)), columns=["key"]).column("key") for p in paths]


def _arrow_fs(uri: str, storage: StorageConfig) -> pafs.FileSystem:
    fs, _ = filesystem(uri, storage)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
