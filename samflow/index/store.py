"""The files of one index, in a local work folder and published under ``DST/_index/<kind>/``.

    <work>/vectors.f32           the segment's vectors, float32, row i = the segment's i-th id
    <work>/ids/<start>.parquet   id-map parts, one per source file (merged into ids.parquet)
    <work>/index.faiss           the FAISS index (a checkpoint while vectors are being added)
    <work>/trained.faiss         the trained, empty index (what a later segment starts from)
    <work>/state.json            build progress: which source files are in, how far adding got

Published, an index is a list of segments, each a folder written once and never changed:
``<root>/<segment_id>/{index.faiss, vectors.f32, ids.parquet}`` (the segment that was trained
also holds ``trained.faiss``). ``<root>/manifest.json`` lists them (``segments``: id, first
global id, count) and is written last: it is the commit point, so a reader never sees half an
index. ``index add`` uploads one new segment and a new manifest; a build or a compaction
uploads one segment holding everything and the manifest, then drops the folders it no longer
lists. Manifests from before segments (no ``segments`` key) read as one segment, the build.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import faiss
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
TRAINED = "trained.faiss"
PUBLISHED = (INDEX, VECTORS, IDS)
OPTIONAL = (TRAINED,)  # published when the work folder has it
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


def write_id_part(work: Path, start: int, meta: pa.Table, first_id: int = 0) -> None:
    """Rows ``start..`` of the work folder; their global ids begin at ``first_id + start`` (a
    segment added after others starts past their ids)."""
    folder = work / IDS_PARTS
    folder.mkdir(exist_ok=True)
    ids = pa.array(np.arange(first_id + start, first_id + start + meta.num_rows, dtype=np.int64))
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


def segments(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's segments in id order; a manifest from before segments is one segment."""
    return manifest.get("segments") or [{"id": manifest["build_id"], "start": 0, "count": manifest["count"]}]


def _is_file(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def publish_segment(work: Path, fs: pafs.FileSystem, root: str, segment_id: str) -> None:
    """Copy (local: move) the work folder's files to ``root/<segment_id>/``: a new folder, so
    nothing published before is written again."""
    folder = f"{root}/{segment_id}"
    fs.create_dir(folder, recursive=True)
    local = isinstance(fs, pafs.LocalFileSystem)
    for name in PUBLISHED + tuple(n for n in OPTIONAL if (work / n).exists()):
        if local:
            os.replace(work / name, f"{folder}/{name}")
        else:
            pafs.copy_files(str(work / name), f"{folder}/{name}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def write_manifest(fs: pafs.FileSystem, root: str, manifest: dict[str, Any]) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        write_json(Path(root) / MANIFEST, manifest)
        return
    with fs.open_output_stream(f"{root}/{MANIFEST}") as out:  # one PUT: whole or nothing
        out.write(json.dumps(manifest, indent=1, sort_keys=True).encode())


def drop_unlisted(fs: pafs.FileSystem, root: str, manifest: dict[str, Any]) -> None:
    """Delete segment folders the manifest no longer lists (after a build or a compaction)."""
    listed = {segment["id"] for segment in segments(manifest)}
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name not in listed and name.startswith("b-"):
            fs.delete_dir(info.path)


def publish(work: Path, fs: pafs.FileSystem, root: str, manifest: dict[str, Any]) -> None:
    """A whole index (build, compaction) as one segment: its files, then the manifest, then
    older segments dropped. ``root`` is a path inside ``fs``."""
    publish_segment(work, fs, root, manifest["build_id"])
    write_manifest(fs, root, manifest)
    drop_unlisted(fs, root, manifest)


def read_manifest(fs: pafs.FileSystem, root: str) -> dict[str, Any] | None:
    path = f"{root}/{MANIFEST}"
    if not _is_file(fs, path):
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())


def fetch_segment(fs: pafs.FileSystem, root: str, cache: Path, segment_id: str,
                  names: tuple[str, ...] = PUBLISHED) -> Path:
    """A local folder holding the segment's ``names``: the folder itself on a local disk, else a
    copy under ``cache`` (segments never change, so each is downloaded once)."""
    folder = f"{root}/{segment_id}"
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(folder)
    target = cache / segment_id
    if names == PUBLISHED and target.exists():
        return target
    tmp = cache / f".{segment_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in names:
        pafs.copy_files(f"{folder}/{name}", str(tmp / name),
                        source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    if names != PUBLISHED:
        return tmp
    os.replace(tmp, target)
    return target


def fetch(fs: pafs.FileSystem, root: str, cache: Path, manifest: dict[str, Any]) -> list[Path]:
    """Local folders of every segment of the published index, in id order."""
    return [fetch_segment(fs, root, cache, segment["id"]) for segment in segments(manifest)]


def trained_index(fs: pafs.FileSystem, root: str, cache: Path, manifest: dict[str, Any]) -> faiss.Index:
    """The trained, empty index a new segment starts from: ``trained.faiss`` of the segment
    that was trained, or (an index published before segments) its index, emptied."""
    first = segments(manifest)[0]["id"]
    name = TRAINED if _is_file(fs, f"{root}/{first}/{TRAINED}") else INDEX
    folder = fetch_segment(fs, root, cache, first, (name,))
    index = faiss.read_index(str(folder / name))
    index.reset()  # a trained index keeps its quantizer and codebooks when emptied
    return index


class SegmentVectors:
    """The vectors files of several segments read as one matrix of global ids (re-ranking,
    dedup): a row goes to the segment whose id range holds it."""

    def __init__(self, files: list[VectorFile]) -> None:
        self.files = files
        self.dim = files[0].dim
        self.starts = np.cumsum([0] + [f.rows() for f in files])

    def rows(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        for segment, file in enumerate(self.files):
            first, end = int(self.starts[segment]), int(self.starts[segment + 1])
            if start < end and stop > first:
                parts.append(file.read(max(start, first) - first, min(stop, end) - first))
        return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)

    def chunks(self, start: int, stop: int, rows: int):
        for begin in range(start, stop, rows):
            yield begin, self.read(begin, min(begin + rows, stop))

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.rows_at(np.asarray(rows, dtype=np.int64))

    def rows_at(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        owner = np.searchsorted(self.starts, rows, side="right") - 1
        for segment in np.unique(owner):
            mine = np.flatnonzero(owner == segment)
            out[mine] = self.files[segment].rows_at(rows[mine] - self.starts[segment])
        return out


def gather(folders: list[Path], work: Path) -> int:
    """Segments' vectors and ids into one work folder (a compaction's input); returns the rows."""
    work.mkdir(parents=True, exist_ok=True)
    (work / IDS_PARTS).mkdir(exist_ok=True)
    rows = 0
    with open(work / VECTORS, "wb") as out:
        for folder in folders:
            with open(folder / VECTORS, "rb") as vectors:
                shutil.copyfileobj(vectors, out, 1 << 24)
            shutil.copyfile(folder / IDS, work / IDS_PARTS / f"{rows:012d}.parquet")
            rows += pq.ParquetFile(folder / IDS).metadata.num_rows
    return rows
