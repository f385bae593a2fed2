"""Manifests: Parquet / CSV / JSONL file(s) with a ``uri`` column and an optional ``id``, read
with Ray Data on the workers, so 100M entries are never listed on the driver. An entry's ``id``
is its key: its file may move to another URI without being annotated again."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from samflow.config import StorageConfig
from samflow.inputs.formats import KEY_SCHEMA, InputFormatError, suffix
from samflow.inputs.parquet import parquet_schema
from samflow.schemas.ids import ID_KEY_PREFIX
from samflow.store.storage import filesystem

READERS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}


def is_table(uri: str) -> bool:
    return suffix(uri) in READERS


def check(uris: list[str], storage: StorageConfig) -> None:
    bad = [uri for uri in uris if not is_table(uri)]
    if bad:
        raise InputFormatError(f"--input-format manifest: {bad[0]} is not Parquet, CSV or JSONL")
    if len({READERS[suffix(uri)] for uri in uris}) > 1:
        raise InputFormatError("--input-format manifest: the manifest files mix formats")
    if uris and suffix(uris[0]) == ".parquet" and "uri" not in parquet_schema(uris[0], storage).names:
        raise InputFormatError(f"manifest {uris[0]} has no 'uri' column")


def key_dataset(uris: list[str], storage: StorageConfig) -> ray.data.Dataset:
    read = getattr(ray.data, f"read_{READERS[suffix(uris[0])]}")
    fs, paths = _paths(uris, storage)
    return read(paths, filesystem=fs).map_batches(manifest_keys, batch_format="pyarrow")


def _paths(uris: list[str], storage: StorageConfig) -> tuple[Any, list[str]]:
    fs, _ = filesystem(uris[0], storage)
    return pa.fs.PyFileSystem(pa.fs.FSSpecHandler(fs)), [filesystem(u, storage)[1] for u in uris]


def manifest_keys(batch: pa.Table) -> pa.Table:
    """Key rows of manifest entries: an entry's ``id``, when the manifest has the column and the
    entry a value, is its key; else its URI."""
    if "uri" not in batch.column_names:
        raise InputFormatError(f"manifest has no 'uri' column (columns: {batch.column_names})")
    batch = batch.filter(pc.is_valid(batch.column("uri")))
    uris = batch.column("uri").cast(pa.string())
    n = len(uris)
    empty = pa.array([""] * n, pa.string())
    ids = batch.column("id").cast(pa.string()).fill_null("") if "id" in batch.column_names else empty
    keys = pc.if_else(pc.equal(ids, ""), uris, pc.binary_join_element_wise(ID_KEY_PREFIX, ids, ""))
    return pa.table({"key": keys, "container": empty, "size": pa.array(np.zeros(n, np.int64)),
                     "error_type": empty, "error_message": empty, "uri": uris, "source_id": ids},
                    schema=KEY_SCHEMA)
