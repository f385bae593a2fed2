"""Synthetic commit history in an output store, for the plan's tests and bench/plan.py: committed
shards as the commit protocol leaves them (a marker each, its keys in the done-set), without
running a model."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from samflow.config import StorageConfig
from samflow.inputs.formats import container_of
from samflow.store.catalog import COMMITS, DONE, Catalog
from samflow.store.doneset import _arrow_fs, done_table, with_bucket


def marker(shard: str, uris: list[str]) -> dict:
    return {"shard": shard, "run_id": "history", "uris": uris, "rows": {"images": len(uris), DONE: len(uris)}}


def commit_shards(dst: str, storage: StorageConfig, shards: dict[str, list[str]], compacted: bool) -> None:
    """Commit ``shards`` (name: item keys) the way a run does: each shard's done keys (per-shard
    files, or already folded into the bucketed table when ``compacted``), then its marker."""
    catalog = Catalog(dst, storage)
    keys = [key for uris in shards.values() for key in uris]
    if compacted and keys:
        table = with_bucket(done_table(keys, [container_of(key) for key in keys]))
        pq.write_to_dataset(table, catalog.path(DONE), partition_cols=["bucket"],
                            filesystem=_arrow_fs(dst, storage), basename_template="history-{i}.parquet")
    for shard, uris in shards.items():
        if not compacted:
            path = catalog.path(DONE, f"{shard}.parquet")
            catalog.fs.makedirs(catalog.path(DONE), exist_ok=True)
            with catalog.fs.open(path, "wb") as fh:
                pq.write_table(done_table(uris, [container_of(key) for key in uris]), fh)
    # Markers last and in one go (many PUTs at once on object stores): they are the commit points.
    catalog.fs.makedirs(catalog.path(COMMITS), exist_ok=True)
    catalog.fs.pipe({catalog.path(COMMITS, f"{shard}.json"): json.dumps(marker(shard, uris)).encode()
                     for shard, uris in shards.items()})


def checkpointed_history(dst: str, storage: StorageConfig, shards: int, keys_per_shard: int, tail: int) -> None:
    """An output with ``shards`` committed shards as compaction leaves them (one checkpoint, the
    done keys in the bucketed table), plus ``tail`` shards committed since (markers and per-shard
    done files, as a run leaves them before it compacts)."""
    from samflow.store import checkpoint

    def keys(n: int) -> list[str]:
        return [f"s3://history-bucket/{n // 1000:06d}/{n:09d}-{k}.jpg" for k in range(keys_per_shard)]

    old = {f"h{n:09d}": keys(n) for n in range(shards)}
    catalog = Catalog(dst, storage)
    checkpoint.write_checkpoint(catalog.fs, catalog.path(COMMITS), 1,
                                checkpoint.to_rows({name: marker(name, uris) for name, uris in old.items()}))
    everything = [key for uris in old.values() for key in uris]
    table = with_bucket(done_table(everything, [""] * len(everything)))
    pq.write_to_dataset(table, catalog.path(DONE), partition_cols=["bucket"],
                        filesystem=_arrow_fs(dst, storage), basename_template="history-{i}.parquet")
    commit_shards(dst, storage, {f"t{n:09d}": keys(shards + n) for n in range(tail)}, compacted=False)
