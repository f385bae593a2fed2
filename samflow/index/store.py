"""The files of one index, in a local work folder and published under ``DST/_index/<kind>/``.

    <work>/vectors.f32           every vector, float32, row i = id i (re-ranking, recall, dedup)
    <work>/ids/<start>.parquet   id-map parts, one per source file (merged into ids.parquet)
    <work>/index.faiss           the FAISS index (a checkpoint while vectors are being added)
    <work>/state.json            build progress: which source files are in, how far adding got

Published: ``<root>/<build_id>/{index.faiss, vectors.f32, ids.parquet}`` first, then
``<root>/manifest.json`` naming the build: the manifest is the commit point, so a reader never
sees half an index, and a newer build replaces the old one whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

VECTORS = "vectors.f32"
INDEX = "index.faiss"
IDS = "ids.parquet"
IDS_PARTS = "ids"
STATE = "state.json"
MANIFEST = "manifest.json"
PUBLISHED = (INDEX, VECTORS, IDS)
ID_ROW_GROUP = 65536


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Whole or not at all (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


class VectorFile:
    """Append-only float32 matrix on disk, read back in chunks (no mapping kept while building,
    so resident memory stays one chunk whatever the row count)."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim

    @property
    def row_bytes(self) -> int:
        return 4 * self.dim

    def rows(self) -> int:
        return self.path.stat().st_size // self.row_bytes if self.path.exists() else 0

    def truncate(self, rows: int) -> None:
        """Drop rows past ``rows`` (what a crashed build appended after its last checkpoint)."""
        with open(self.path, "ab") as fh:
            fh.truncate(rows * self.row_bytes)

    def append(self, vectors: np.ndarray) -> None:
        with open(self.path, "ab") as fh:
            fh.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())

    def read(self, start: int, stop: int) -> np.ndarray:
        with open(self.path, "rb") as fh:
            fh.seek(start * self.row_bytes)
            data = np.fromfile(fh, dtype=np.float32, count=(stop - start) * self.dim)
        return data.reshape(-1, self.dim)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted or unsorted positions (a sample, a cluster's members). Positioned
        reads, not a memory map: the page cache maps large folios whole, so a few hundred rows
        gathered through a map of a large file would put much of it in the resident set."""
        return self.rows_at(np.asarray(rows, dtype=np.int64))

    def rows_at(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted positions by positioned reads: unlike a memory map, the pages read do
        not stay in this process's resident set (re-ranking touches a few rows per query)."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        view = memoryview(out).cast("B")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, row in enumerate(rows.tolist()):
                os.preadv(fd, [view[i * self.row_bytes:(i + 1) * self.row_bytes]], row * self.row_bytes)
        finally:
            os.close(fd)
        return out

    def chunks(self, start: int, stop: int, rows: int):
        for begin in range(start, stop, rows):
            yield begin, self.read(begin, min(begin + rows, stop))


def write_id_part(work: Path, start: int, meta: pa.Table) -> None:
    folder = work / IDS_PARTS
    folder.mkdir(exist_ok=True)
    ids = pa.array(np.arange(start, start + meta.num_rows, dtype=np.int64))
    table = meta.add_column(0, "id", ids)
    tmp = folder / f".{start:012d}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, folder / f"{start:012d}.parquet")


def drop_id_parts_from(work: Path, start: int) -> None:
    """Remove id parts at or past ``start`` (written by a build that crashed before its checkpoint)."""
    for part in (work / IDS_PARTS).glob("*.parquet"):
        if int(part.stem) >= start:
            part.unlink()


def merge_id_parts(work: Path) -> None:
    """ids/*.parquet -> ids.parquet, part by part (one part in memory at a time)."""
    parts = sorted((work / IDS_PARTS).glob("*.parquet"))
    tmp = work / f".{IDS}.tmp"
    writer = None
    for part in parts:
        table = pq.read_table(part)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table.cast(writer.schema), row_group_size=ID_ROW_GROUP)
    if writer is not None:
        writer.close()
        os.replace(tmp, work / IDS)


def split_ids_into_parts(work: Path) -> None:
    """A fetched index's ids.parquet becomes the first part again (``index add`` appends more)."""
    (work / IDS_PARTS).mkdir(exist_ok=True)
    if (work / IDS).exists():
        os.replace(work / IDS, work / IDS_PARTS / f"{0:012d}.parquet")


def publish(work: Path, fs: pafs.FileSystem, root: str, manifest: dict[str, Any]) -> None:
    """Copy (local: move) the built files under ``root/<build_id>/``, then the manifest, then
    drop older builds. ``root`` is a path inside ``fs``."""
    build_dir = f"{root}/{manifest['build_id']}"
    fs.create_dir(build_dir, recursive=True)
    local = isinstance(fs, pafs.LocalFileSystem)
    for name in PUBLISHED:
        if local:
            os.replace(work / name, f"{build_dir}/{name}")
        else:
            pafs.copy_files(str(work / name), f"{build_dir}/{name}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    if local:
        write_json(Path(root) / MANIFEST, manifest)
    else:
        with fs.open_output_stream(f"{root}/{MANIFEST}") as out:  # one PUT: whole or nothing
            out.write(body)
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name != manifest["build_id"] and name.startswith("b-"):
            fs.delete_dir(info.path)


def read_manifest(fs: pafs.FileSystem, root: str) -> dict[str, Any] | None:
    path = f"{root}/{MANIFEST}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())


def fetch(fs: pafs.FileSystem, root: str, cache: Path, manifest: dict[str, Any]) -> Path:
    """A local folder holding the published build: the folder itself on a local disk, else a
    copy under ``cache`` (downloaded once per build)."""
    build_dir = f"{root}/{manifest['build_id']}"
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(build_dir)
    target = cache / manifest["build_id"]
    if not target.exists():
        tmp = cache / f".{manifest['build_id']}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in PUBLISHED:
            pafs.copy_files(f"{build_dir}/{name}", str(tmp / name),
                            source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        os.replace(tmp, target)
    return target


def copy_build(folder: Path, work: Path) -> None:
    """A published build's files into a fresh work folder (``index add`` continues from it)."""
    work.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        shutil.copyfile(folder / name, work / name)
