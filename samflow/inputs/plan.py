"""What a run's items are: SRC resolved to a format (detected unless given), its key rows built
on the workers for the plan, and the keys still to do turned back into the items decode reads.

Every format yields the same key rows (``samflow.inputs.formats.KEY_SCHEMA``). Loose files and
manifest entries are read by decode; members of a container (tar shard, Parquet file) are read
here, container by container, and carry their bytes to decode inline.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray

from samflow.config import RunConfig, StorageConfig
from samflow.inputs import files, manifest, parquet, webdataset
from samflow.inputs.formats import (
    INPUT_FORMATS,
    ITEM_SCHEMA,
    LOOSE_FORMATS,
    VIDEO_SUFFIXES,
    TAR_SUFFIXES,
    InputFormatError,
    item_row,
    suffix,
)
from samflow.inputs.layouts import metadata_files
from samflow.store.doneset import KEYS_JOINED_HERE
from samflow.store.storage import absolute_uri, list_files, selected

ITEMS_PER_BATCH = 8  # items a container reader hands to decode at a time
MAX_ITEM_BLOCKS = 10_000  # a run's loose items come in at most this many blocks


@dataclass(frozen=True)
class Source:
    """A resolved input: its format and the listed files (loose files, manifests, tar shards
    or Parquet files), plus how many listed files the globs, DST or being the dataset's
    metadata (samflow/inputs/layouts.py) left out."""

    uri: str
    format: str
    files: list[tuple[str, int]]
    excluded: int

    @property
    def may_hold_videos(self) -> bool:
        """False only when it surely holds none: loose files, none with a video's suffix (a
        manifest's or a container's members are not known before they are read)."""
        return self.format != "files" or any(uri.lower().endswith(VIDEO_SUFFIXES) for uri, _ in self.files)


def resolve_source(src: str, cfg: RunConfig, dst: str, fmt: str | None = None) -> Source:
    """List ``src`` and settle its format (``input.format`` unless ``fmt`` is given)."""
    fmt = fmt or cfg.input.format
    if fmt not in INPUT_FORMATS:
        raise InputFormatError(f"unknown input format {fmt!r}; one of {', '.join(INPUT_FORMATS)}")
    listed = list_files(src, cfg.storage, ["**"], [])
    # Listed files are named absolutely, whether SRC and DST were given relative or not.
    dst_prefix = absolute_uri(dst, cfg.storage).rstrip("/") + "/"
    root = absolute_uri(src, cfg.storage).rstrip("/") + "/"
    relative = {uri: _relative(uri, root) for uri, _ in listed if not uri.startswith(dst_prefix)}
    if len(listed) > 1:
        relative = {uri: rel for uri, rel in relative.items() if selected(rel, cfg.input.include, cfg.input.exclude)}
        metadata = metadata_files(list(relative.values()))
        relative = {uri: rel for uri, rel in relative.items() if rel not in metadata}
    chosen = [(uri, size) for uri, size in listed if uri in relative]
    if fmt == "auto":
        fmt = detect_format([uri for uri, _ in chosen], cfg.storage)
    check_format(fmt, [uri for uri, _ in chosen], cfg.storage)
    return Source(src, fmt, chosen, len(listed) - len(chosen))


def _relative(uri: str, root: str) -> str:
    return uri[len(root):] if uri.startswith(root) else posixpath.basename(uri)


def detect_format(uris: list[str], storage: StorageConfig) -> str:
    """``webdataset`` when every file is a tar, ``manifest`` / ``parquet`` when every file is a
    table (Parquet with a bytes column: ``parquet``), else ``files``."""
    if not uris:
        return "files"
    if all(uri.lower().endswith(TAR_SUFFIXES) for uri in uris):
        return "webdataset"
    if not all(manifest.is_table(uri) for uri in uris):
        return "files"
    if {suffix(uri) for uri in uris} == {".parquet"} and \
            parquet.bytes_column(parquet.parquet_schema(uris[0], storage)) is not None:
        return "parquet"
    return "manifest"


def check_format(fmt: str, uris: list[str], storage: StorageConfig) -> None:
    if fmt == "manifest":
        manifest.check(uris, storage)
    elif fmt == "webdataset":
        webdataset.check(uris)
    elif fmt == "parquet":
        parquet.check(uris, storage)


def key_dataset(source: Source, cfg: RunConfig) -> ray.data.Dataset | pa.Table:
    """The key rows of every item of ``source``, built on the workers; loose files' (listed here)
    as a table held here when there are few enough to plan here (``doneset.KEYS_JOINED_HERE``)."""
    uris = [uri for uri, _ in source.files]
    if source.format == "files":
        if len(source.files) <= KEYS_JOINED_HERE:
            return files.key_table(source.files)
        return files.key_dataset(source.files)
    if source.format == "manifest":
        return manifest.key_dataset(uris, cfg.storage)
    keys = webdataset.TarKeys if source.format == "webdataset" else parquet.ParquetKeys
    containers = ray.data.from_items([{"uri": uri} for uri in uris], override_num_blocks=max(1, len(uris)))
    return containers.map_batches(keys(cfg.storage), batch_size=1, batch_format="pyarrow")


# ------------------------------------------------------------------------ items (the pipeline)


def todo_blocks(todo: ray.data.Dataset | pa.Table, fmt: str, listed: int) -> ray.data.Dataset:
    """The key rows still to do, shaped for the run before the plan materializes them.

    Loose files and manifest entries become decode's item rows, exactly ITEMS_PER_BATCH to a block
    but the last (more when that would make over MAX_ITEM_BLOCKS blocks, so the driver holds a
    bounded number of block refs): each small block is one decode task, and shards commit as they
    finish. Exactly: a short tail block per input block would reach the model actors as a short
    batch. Ray Data's repartition asks Ray for a whole CPU per task and takes no resource
    arguments, so it runs here, before any model actor holds a CPU: inside the stream it could
    never be placed beside them on a 1-CPU cluster. Members of a container stay in their bucket's
    block, so the run reads each container once (``ContainerKeys``). A table (a plan made in this
    process) is cut into the same blocks here, without Ray tasks.
    """
    rows = max(ITEMS_PER_BATCH, math.ceil(listed / MAX_ITEM_BLOCKS))
    if isinstance(todo, pa.Table):
        if fmt not in LOOSE_FORMATS:
            return ray.data.from_arrow(todo)
        items = _loose_items(todo)
        return ray.data.from_arrow([items.slice(i, rows) for i in range(0, items.num_rows, rows)] or [items])
    if fmt not in LOOSE_FORMATS:
        return todo
    loose = todo.map_batches(_loose_items, batch_format="pyarrow")
    return loose.repartition(target_num_rows_per_block=rows, strict=True)


@dataclass(frozen=True)
class ContainerKeys:
    """Key rows still to do of members of tar shards or Parquet files: the run reads the members
    (``items``) with the CPUs its graph's fit gives that step (samflow/pipeline/resources.py)."""

    keys: ray.data.Dataset
    format: str
    storage: StorageConfig

    def items(self, num_cpus: float) -> ray.data.Dataset:
        """The items decode reads (``ITEM_SCHEMA``)."""
        return self.keys.map_batches(ContainerItems(self.storage, self.format), batch_size=None,
                                     batch_format="pyarrow", num_cpus=num_cpus)


def items_from_keys(todo: ray.data.Dataset, fmt: str, storage: StorageConfig) -> ray.data.Dataset | ContainerKeys:
    """What the run streams from the plan's ``todo`` (shaped by ``todo_blocks``): loose items as
    they are, members of containers still to be read."""
    if fmt in LOOSE_FORMATS:
        return todo
    return ContainerKeys(todo, fmt, storage)


def _loose_items(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return pa.table({
        "uri": batch.column("uri"), "size": batch.column("size"),
        "data": pa.nulls(n, pa.binary()),
        "error_type": batch.column("error_type"), "error_message": batch.column("error_message"),
        "meta_json": pa.array([""] * n, pa.string()), "source_id": batch.column("source_id"),
    })


class ContainerItems:
    """Reads the wanted members of each container (tar shard or Parquet file) in a block of
    key rows, container by container, and yields them with their bytes a few at a time. A
    wanted member that cannot be read becomes an error item."""

    def __init__(self, storage: StorageConfig, fmt: str) -> None:
        self.storage = storage
        self.fmt = fmt

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        wanted: dict[str, dict[str, dict[str, Any]]] = {}
        for row in batch.to_pylist():
            wanted.setdefault(row["container"], {})[row["key"]] = row
        pending: list[dict[str, Any]] = []
        for container, rows in wanted.items():
            for item in self._container(container, rows):
                pending.append(item)
                if len(pending) >= ITEMS_PER_BATCH:
                    yield pa.Table.from_pylist(pending, schema=ITEM_SCHEMA)
                    pending = []
        if pending:
            yield pa.Table.from_pylist(pending, schema=ITEM_SCHEMA)

    def _container(self, container: str, rows: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
        left = dict(rows)
        for key, row in rows.items():
            if row["error_type"]:  # found broken while planning
                yield item_row(key, None, row["error_type"], row["error_message"])
                del left[key]
        if not left:
            return
        reader = webdataset.tar_members if self.fmt == "webdataset" else parquet.parquet_rows
        failure = ""
        try:
            for key, data, sidecar in reader(container, left, self.storage):
                if key in left:
                    del left[key]
                    yield webdataset.with_sidecar(key, data, sidecar)
        except Exception as exc:  # noqa: BLE001 - members read so far are kept; the rest fail
            failure = f"{type(exc).__name__}: {exc}"
        for key in left:
            reason = f"could not read it from {container}" + (f": {failure}" if failure else ": not found")
            yield item_row(key, None, "read_failed", reason)
