"""Input formats of a run: what the items are, as Ray Data datasets built on the workers.

    files       a folder or prefix of image / video files (listed on the driver, as before)
    manifest    Parquet / CSV / JSONL file(s) with a ``uri`` column (optional ``id``): read with
                Ray Data on the workers, so 100M items are never listed on the driver
    webdataset  tar shards; each image member is an item, ``uri = <tar uri>#<member>``; other
                members (``.json``, ``.txt``, ...) are sidecars, not items (SA-1B's
                ``sa_N.jpg`` + ``sa_N.json`` tars included). A sample's ``.json`` sidecar (same
                WebDataset key: the member path up to the file name's first dot) travels with
                its image as ``meta_json`` to the ``images`` table
    parquet     Parquet files with a column of image bytes (img2dataset, Hugging Face datasets);
                ``uri = <file uri>#<id>``, the id from the first of the columns ``id``, ``key``,
                ``url``, ``uri`` present, else the row number

Every format yields the same *key rows* for planning (``key``, ``container``, ``size``,
``error_type``, ``error_message``): ``container`` is the tar or Parquet file an item lives in
("" for loose files and manifest entries). A key row with an error (a corrupt tar) becomes an
error row of the run. The pipeline turns the keys still to do back into items: loose files are
read by decode; members of a container are read here, container by container, and carry their
bytes to decode inline.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from samflow.config import RunConfig, StorageConfig
from samflow.schemas.ids import ID_KEY_PREFIX
from samflow.store.storage import absolute_uri, filesystem, list_files, open_file, selected

log = logging.getLogger(__name__)

FORMATS = ("auto", "files", "manifest", "webdataset", "parquet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif")
MANIFEST_READERS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ID_COLUMNS = ("id", "key", "url", "uri")  # the first present names a Parquet row
CONTAINER_SUFFIXES = (*TAR_SUFFIXES, ".parquet")
BYTES_PREFERRED = ("jpg", "jpeg", "png", "webp", "image", "img", "bytes")
# ``key``: what the done-set holds (``samflow.schemas.ids.item_key``: the URI, or a manifest's
# ``id``); ``uri``: where the item is read; ``source_id``: the manifest's id ("" when none).
KEY_SCHEMA = pa.schema([
    ("key", pa.string()), ("container", pa.string()), ("size", pa.int64()),
    ("error_type", pa.string()), ("error_message", pa.string()),
    ("uri", pa.string()), ("source_id", pa.string()),
])
ITEMS_PER_BATCH = 8  # items a container reader hands to decode at a time
_SCAN_BLOCK = 64 * 1024  # read-ahead while scanning tar headers (a seek skips the member data)


class InputFormatError(ValueError):
    """The source is not what its (given or detected) format needs: a user mistake."""


@dataclass(frozen=True)
class Source:
    """A resolved input: its format and the listed files (loose files, manifests, tar shards
    or Parquet files), plus how many listed files the globs or DST excluded."""

    uri: str
    format: str
    files: list[tuple[str, int]]
    excluded: int


def resolve_source(src: str, cfg: RunConfig, dst: str, fmt: str | None = None) -> Source:
    """List ``src`` and settle its format (``input.format`` unless ``fmt`` is given)."""
    fmt = fmt or cfg.input.format
    if fmt not in FORMATS:
        raise InputFormatError(f"unknown input format {fmt!r}; one of {', '.join(FORMATS)}")
    listed = list_files(src, cfg.storage, ["**"], [])
    # Listed files are named absolutely, whether SRC and DST were given relative or not.
    dst_prefix = absolute_uri(dst, cfg.storage).rstrip("/") + "/"
    root = absolute_uri(src, cfg.storage).rstrip("/") + "/"
    chosen = [
        (uri, size) for uri, size in listed
        if not uri.startswith(dst_prefix)
        and (len(listed) == 1 or selected(_relative(uri, root), cfg.input.include, cfg.input.exclude))
    ]
    if fmt == "auto":
        fmt = detect_format([uri for uri, _ in chosen], cfg.storage)
    _check_format(fmt, chosen, cfg.storage)
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
    suffixes = {_suffix(uri) for uri in uris}
    if not suffixes <= set(MANIFEST_READERS):
        return "files"
    if suffixes == {".parquet"} and _bytes_column(_parquet_schema(uris[0], storage)) is not None:
        return "parquet"
    return "manifest"


def _suffix(uri: str) -> str:
    return posixpath.splitext(uri.lower())[1]


def _check_format(fmt: str, files: list[tuple[str, int]], storage: StorageConfig) -> None:
    uris = [uri for uri, _ in files]
    if fmt == "manifest":
        bad = [uri for uri in uris if _suffix(uri) not in MANIFEST_READERS]
        if bad:
            raise InputFormatError(f"--input-format manifest: {bad[0]} is not Parquet, CSV or JSONL")
        if len({MANIFEST_READERS[_suffix(uri)] for uri in uris}) > 1:
            raise InputFormatError("--input-format manifest: the manifest files mix formats")
        if uris and _suffix(uris[0]) == ".parquet" and "uri" not in _parquet_schema(uris[0], storage).names:
            raise InputFormatError(f"manifest {uris[0]} has no 'uri' column")
    elif fmt == "webdataset":
        bad = [uri for uri in uris if not uri.lower().endswith(TAR_SUFFIXES)]
        if bad:
            raise InputFormatError(f"--input-format webdataset: {bad[0]} is not a tar shard")
    elif fmt == "parquet":
        for uri in uris[:1]:
            schema = _parquet_schema(uri, storage)
            if _bytes_column(schema) is None:
                raise InputFormatError(f"{uri} has no column of image bytes")


def _parquet_schema(uri: str, storage: StorageConfig) -> pa.Schema:
    try:
        with open_file(uri, storage) as fh:
            return pq.read_schema(fh)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a readable table"
        raise InputFormatError(f"cannot read the Parquet schema of {uri}: {exc}") from exc


def _bytes_column(schema: pa.Schema) -> str | None:
    """The column holding image bytes: binary, or a struct with a binary ``bytes`` field."""
    found = [
        f.name for f in schema
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
        or (pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0)
    ]
    for name in BYTES_PREFERRED:
        if name in found:
            return name
    return found[0] if found else None


# --------------------------------------------------------------------------- keys (planning)


def key_dataset(source: Source, cfg: RunConfig) -> ray.data.Dataset:
    """The key rows of every item of ``source``, built on the workers."""
    uris = [uri for uri, _ in source.files]
    if source.format == "files":
        rows = [_key(uri, "", size) for uri, size in source.files]
        return ray.data.from_items(rows, override_num_blocks=max(1, min(200, len(rows) // 50_000 + 1)))
    if source.format == "manifest":
        reader = MANIFEST_READERS[_suffix(uris[0])]
        read = getattr(ray.data, f"read_{reader}")
        fs, paths = _paths(uris, cfg.storage)
        return read(paths, filesystem=fs).map_batches(_manifest_keys, batch_format="pyarrow")
    if source.format == "webdataset":
        shards = ray.data.from_items([{"uri": uri} for uri in uris], override_num_blocks=max(1, len(uris)))
        return shards.map_batches(TarKeys(cfg.storage), batch_size=1, batch_format="pyarrow")
    files = ray.data.from_items([{"uri": uri} for uri in uris], override_num_blocks=max(1, len(uris)))
    return files.map_batches(ParquetKeys(cfg.storage), batch_size=1, batch_format="pyarrow")


def _paths(uris: list[str], storage: StorageConfig) -> tuple[Any, list[str]]:
    fs, _ = filesystem(uris[0], storage)
    return pa.fs.PyFileSystem(pa.fs.FSSpecHandler(fs)), [filesystem(u, storage)[1] for u in uris]


def _key(key: str, container: str, size: int = 0, error_type: str = "", message: str = "") -> dict[str, Any]:
    return {"key": key, "container": container, "size": int(size), "error_type": error_type,
            "error_message": message, "uri": key, "source_id": ""}


def _keys_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=KEY_SCHEMA)


def _manifest_keys(batch: pa.Table) -> pa.Table:
    """Key rows of manifest entries; an entry's ``id`` (when the manifest has the column and the
    entry a value) is its key, so the file may move to another URI without being done again."""
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


class TarKeys:
    """Key rows of one tar shard's image members, from its headers (member data is skipped by
    seeking). A shard that cannot be read to its end adds one error row for the tar."""

    def __init__(self, storage: StorageConfig) -> None:
        self.storage = storage

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for tar_uri in batch.column("uri").to_pylist():
            rows.extend(self._members(tar_uri))
        return _keys_table(rows)

    def _members(self, tar_uri: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        try:
            fs, path = filesystem(tar_uri, self.storage)
            with fs.open(path, "rb", block_size=_SCAN_BLOCK) as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
                for member in tar:
                    if member.isfile() and _is_image(member.name):
                        rows.append(_key(f"{tar_uri}#{member.name}", tar_uri, member.size))
                if tar_uri.lower().endswith(".tar"):
                    _check_tail(fh, tar.offset)
        except Exception as exc:  # noqa: BLE001 - a broken shard is an error row, not a failed run
            rows.append(_key(tar_uri, tar_uri, 0, "corrupt_tar", _tar_error(exc, len(rows))))
        return rows


def _check_tail(fh: Any, end: int) -> None:
    """tarfile stops quietly at a header it cannot parse; only zero padding may follow the
    last member of a whole tar."""
    left = fh.size - end
    if left > tarfile.RECORDSIZE:
        raise tarfile.ReadError(f"{left:,} bytes after byte {end:,} are not a tar member header")
    fh.seek(end)
    if fh.read(left).strip(b"\0"):
        raise tarfile.ReadError(f"garbage after byte {end:,} instead of a tar member header")


def _tar_error(exc: BaseException, read: int) -> str:
    return f"tar shard unreadable after {read} image members: {type(exc).__name__}: {exc}"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not posixpath.basename(name).startswith(".")


class ParquetKeys:
    """Key rows of one Parquet file with image bytes: one per row."""

    def __init__(self, storage: StorageConfig) -> None:
        self.storage = storage

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for uri in batch.column("uri").to_pylist():
            try:
                with open_file(uri, self.storage) as fh:
                    table = pq.ParquetFile(fh).read(columns=_key_columns(pq.read_schema(fh)))
                rows.extend(_key(key, uri) for key in _parquet_keys(uri, table))
            except Exception as exc:  # noqa: BLE001 - a broken file is an error row
                rows.append(_key(uri, uri, 0, "corrupt_parquet", f"cannot read: {type(exc).__name__}: {exc}"))
        return _keys_table(rows)


def _key_columns(schema: pa.Schema) -> list[str]:
    for name in ID_COLUMNS:
        if name in schema.names:
            return [name]
    return []


def _parquet_keys(file_uri: str, table: pa.Table, first_row: int = 0) -> list[str]:
    """Item uris of a Parquet file's rows, in row order (see the module docstring); ``table``
    holds the key column (or none) of the rows from ``first_row`` on."""
    rows = range(first_row, first_row + table.num_rows)
    if not table.column_names:
        return [f"{file_uri}#{row}" for row in rows]
    values = table.column(0).to_pylist()
    return [f"{file_uri}#{v if v is not None else row}" for row, v in zip(rows, values)]


# ------------------------------------------------------------------------ items (the pipeline)


LOOSE_FORMATS = ("files", "manifest")  # items read by decode itself, one URI each
MAX_ITEM_BLOCKS = 10_000  # a run's loose items come in at most this many blocks


def todo_blocks(todo: ray.data.Dataset, fmt: str, listed: int) -> ray.data.Dataset:
    """The key rows still to do, shaped for the run before the plan materializes them.

    Loose files and manifest entries become decode's item rows, exactly ITEMS_PER_BATCH to a block
    but the last (more when that would make over MAX_ITEM_BLOCKS blocks, so the driver holds a
    bounded number of block refs): each small block is one decode task, and shards commit as they
    finish. Exactly: a short tail block per input block would reach the model actors as a short
    batch (1-10 rows instead of 16 on the CLIP path, at up to 2.3 times the time per image). Ray
    Data's repartition asks Ray for a whole CPU per task and takes no resource arguments, so it
    runs here, before any model actor holds a CPU: inside the stream it could never be placed
    beside them on a 1-CPU cluster. Members of a container stay in their bucket's block, so the
    run reads each container once (``ContainerKeys``).
    """
    if fmt not in LOOSE_FORMATS:
        return todo
    rows = max(ITEMS_PER_BATCH, math.ceil(listed / MAX_ITEM_BLOCKS))
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
        """The items decode reads (``uri``, ``size``, ``data``, ``error_type``, ``error_message``)."""
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


# ``meta_json``: the item's sidecar JSON text ("" when it has none), for the images table.
ITEM_SCHEMA = pa.schema([
    ("uri", pa.string()), ("size", pa.int64()), ("data", pa.binary()),
    ("error_type", pa.string()), ("error_message", pa.string()), ("meta_json", pa.string()),
    ("source_id", pa.string()),
])
SIDECAR_SUFFIX = ".json"


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
                yield _item(key, None, row["error_type"], row["error_message"])
                del left[key]
        if not left:
            return
        reader = self._tar_members if self.fmt == "webdataset" else self._parquet_rows
        failure = ""
        try:
            for key, data, sidecar in reader(container, left):
                if key in left:
                    del left[key]
                    yield _item_with_sidecar(key, data, sidecar)
        except Exception as exc:  # noqa: BLE001 - members read so far are kept; the rest fail
            failure = f"{type(exc).__name__}: {exc}"
        for key in left:
            reason = f"could not read it from {container}" + (f": {failure}" if failure else ": not found")
            yield _item(key, None, "read_failed", reason)

    def _tar_members(self, tar_uri: str, wanted: dict[str, Any]) -> Iterator[tuple[str, bytes, bytes | None]]:
        """(key, bytes, sidecar JSON bytes or None) of each wanted member, in one streaming pass.
        A sample's members lie together in a WebDataset tar, so its images wait only until the
        next sample starts, for a sidecar that may follow them."""
        samples = {_sample_key(key.partition("#")[2]) for key in wanted}
        current, images, sidecar = None, [], None
        try:
            with open_file(tar_uri, self.storage) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
                for member in tar:  # streaming: one pass, no seeks
                    if not member.isfile():
                        continue
                    sample = _sample_key(member.name)
                    if sample != current:
                        yield from ((key, data, sidecar) for key, data in images)
                        current, images, sidecar = sample, [], None
                    key = f"{tar_uri}#{member.name}"
                    if key in wanted:
                        images.append((key, _read_member(tar, member)))
                    elif sample in samples and member.name.lower().endswith(SIDECAR_SUFFIX):
                        sidecar = _read_member(tar, member)
        except Exception:
            # A tar cut after a whole sample keeps it: its images were read before the damage.
            yield from ((key, data, sidecar) for key, data in images)
            raise
        yield from ((key, data, sidecar) for key, data in images)

    def _parquet_rows(self, file_uri: str, wanted: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
        with open_file(file_uri, self.storage) as fh:
            parquet = pq.ParquetFile(fh)
            schema = parquet.schema_arrow
            image_column = _bytes_column(schema)
            key_columns = _key_columns(schema)
            row = 0
            for part in parquet.iter_batches(batch_size=256, columns=key_columns + [image_column]):
                table = pa.Table.from_batches([part])
                keys = _parquet_keys(file_uri, table.select(key_columns), row)
                images = table.column(image_column).to_pylist()
                row += table.num_rows
                for key, value in zip(keys, images, strict=True):
                    if key in wanted:
                        yield key, _image_bytes(value), None


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value is not None else b""


def container_of(key: str) -> str:
    """The tar or Parquet file an item key lives in ("" for a loose file or manifest entry)."""
    head, sep, _ = key.partition("#")
    return head if sep and head.lower().endswith(CONTAINER_SUFFIXES) else ""


def _item(
    uri: str, data: bytes | None, error_type: str = "", message: str = "", meta_json: str = ""
) -> dict[str, Any]:
    return {"uri": uri, "size": len(data) if data is not None else 0, "data": data,
            "error_type": error_type, "error_message": message, "meta_json": meta_json, "source_id": ""}


def _item_with_sidecar(uri: str, data: bytes, sidecar: bytes | None) -> dict[str, Any]:
    """The item, its sidecar's JSON text attached; a sidecar that is not JSON fails the item
    (it would go to the images table as JSON)."""
    if sidecar is None:
        return _item(uri, data)
    try:
        text = sidecar.decode("utf-8")
        json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
        return _item(uri, None, "bad_sidecar", f"its {SIDECAR_SUFFIX} sidecar is not JSON: {exc}")
    return _item(uri, data, meta_json=text)


def _sample_key(member: str) -> str:
    """WebDataset's sample key: the member's path up to the first dot of its file name
    (``d/sa_1.jpg`` and ``d/sa_1.json`` are one sample)."""
    folder, name = posixpath.split(member)
    return posixpath.join(folder, name.split(".", 1)[0])


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    extracted = tar.extractfile(member)
    return extracted.read() if extracted else b""
