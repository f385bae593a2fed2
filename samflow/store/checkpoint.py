"""Commit-marker checkpoints: the markers of ``_commits/`` compacted into one Parquet object, so
that reading the commit history costs a few requests whatever its length (as Delta Lake and
Iceberg checkpoint their logs).

    DST/_commits/_checkpoint/<seq>.parquet   every marker up to it: name, shards (group markers), marker JSON
    DST/_commits/<shard>.json                markers written since (or not yet deleted)

Compaction writes checkpoint ``seq + 1`` (the last one's rows plus the markers it listed) whole,
then deletes those markers, then older checkpoints. A kill anywhere leaves a state readers take
as the same history: markers that are also in the checkpoint count once, a checkpoint beside an
older one is the newer. Readers list the markers before the checkpoints: a compaction finishing
in between has put every marker they missed into a checkpoint they then see. A checkpoint that
vanishes while being read (deleted by a newer one) makes the reader list again.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Callable
from typing import TypeVar

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from samflow.store.storage import put_whole

FOLDER = "_checkpoint"
SCHEMA = pa.schema([("name", pa.string()), ("shards", pa.list_(pa.string())), ("marker", pa.string())])
ROW_GROUP = 1_000_000  # rows per Parquet row group: a names-only read asks for few byte ranges
READ_ATTEMPTS = 5
T = TypeVar("T")


def checkpoint_path(commits: str, seq: int) -> str:
    return posixpath.join(commits, FOLDER, f"{seq:016d}.parquet")


def checkpoints(fs: fsspec.AbstractFileSystem, commits: str) -> list[tuple[int, str]]:
    """``(seq, path)`` of the checkpoints under ``commits``, oldest first."""
    folder = posixpath.join(commits, FOLDER)
    fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    found = []
    for path in entries:
        stem = posixpath.basename(path)[: -len(".parquet")]
        if path.endswith(".parquet") and stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def read_history(
    fs: fsspec.AbstractFileSystem, commits: str, read_markers: Callable[[], T], full: bool,
) -> tuple[T, int, pa.Table | None]:
    """What ``read_markers`` reads of the markers (all it needs of them: a marker it lists may be
    compacted and deleted right after), then the latest checkpoint's number and rows (``full``:
    with the marker JSON; else names and shards only): ``0, None`` when there is none yet."""
    columns = None if full else ["name", "shards"]
    for _ in range(READ_ATTEMPTS):
        markers = read_markers()
        found = checkpoints(fs, commits)
        if not found:
            return markers, 0, None
        seq, path = found[-1]
        try:
            with fs.open(path, "rb") as fh:
                return markers, seq, pq.read_table(fh, columns=columns)
        except FileNotFoundError:
            continue  # a newer checkpoint replaced it meanwhile
    raise RuntimeError(f"the commit checkpoints under {commits} kept changing while being read")


def to_rows(markers: dict[str, dict]) -> pa.Table:
    """Checkpoint rows of ``markers`` (marker contents by name)."""
    names = sorted(markers)
    return pa.table({
        "name": pa.array(names, pa.string()),
        "shards": pa.array([markers[n].get("shards") for n in names], pa.list_(pa.string())),
        "marker": pa.array([json.dumps(markers[n], sort_keys=True) for n in names], pa.string()),
    }, schema=SCHEMA)


def write_checkpoint(fs: fsspec.AbstractFileSystem, commits: str, seq: int, rows: pa.Table) -> str:
    """Write checkpoint ``seq`` whole or not at all; returns its path."""
    buffer = io.BytesIO()
    pq.write_table(rows, buffer, row_group_size=ROW_GROUP)
    path = checkpoint_path(commits, seq)
    put_whole(fs, path, buffer.getvalue())
    return path


def merged(previous: pa.Table | None, rows: pa.Table) -> pa.Table:
    """``previous`` checkpoint rows plus ``rows``, one row per marker name (the newer kept)."""
    if previous is None or not previous.num_rows:
        return rows
    kept = previous.filter(pc.invert(pc.is_in(previous.column("name"), value_set=rows.column("name"))))
    return pa.concat_tables([kept.select(SCHEMA.names).cast(SCHEMA), rows])


def names(rows: pa.Table) -> set[str]:
    """Table-file names the checkpoint rows commit (a group marker commits several)."""
    found: set[str] = set()
    for name, shards in zip(rows.column("name").to_pylist(), rows.column("shards").to_pylist(), strict=True):
        found.update(shards if shards is not None else (name,))
    return found


def contents(rows: pa.Table) -> dict[str, dict]:
    """Marker contents by name, from full checkpoint rows."""
    return {name: json.loads(text) for name, text in
            zip(rows.column("name").to_pylist(), rows.column("marker").to_pylist(), strict=True)}
