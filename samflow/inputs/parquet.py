"""Parquet files with a column of image bytes (img2dataset's parquet output, Hugging Face
datasets' ``image`` struct of ``bytes`` and ``path``): one item per row, ``uri = <file uri>#<id>``,
the id from the first of the columns ``id``, ``key``, ``url``, ``uri`` present, else the row
number."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from samflow.config import StorageConfig
from samflow.inputs.formats import InputFormatError, key_row, keys_table
from samflow.store.storage import open_file

ID_COLUMNS = ("id", "key", "url", "uri")  # the first present names a row
BYTES_PREFERRED = ("jpg", "jpeg", "png", "webp", "image", "img", "bytes")


def parquet_schema(uri: str, storage: StorageConfig) -> pa.Schema:
    try:
        with open_file(uri, storage) as fh:
            return pq.read_schema(fh)
    except Exception as exc:
        raise InputFormatError(f"cannot read the Parquet schema of {uri}: {exc}") from exc


def bytes_column(schema: pa.Schema) -> str | None:
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


def check(uris: list[str], storage: StorageConfig) -> None:
    for uri in uris[:1]:
        if bytes_column(parquet_schema(uri, storage)) is None:
            raise InputFormatError(f"{uri} has no column of image bytes")


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
                rows.extend(key_row(key, uri) for key in _row_keys(uri, table))
            except Exception as exc:  # noqa: BLE001 - a broken file is an error row
                rows.append(key_row(uri, uri, 0, "corrupt_parquet", f"cannot read: {type(exc).__name__}: {exc}"))
        return keys_table(rows)


def _key_columns(schema: pa.Schema) -> list[str]:
    for name in ID_COLUMNS:
        if name in schema.names:
            return [name]
    return []


def _row_keys(file_uri: str, table: pa.Table, first_row: int = 0) -> list[str]:
    """Item uris of a Parquet file's rows, in row order (see the module docstring); ``table``
    holds the key column (or none) of the rows from ``first_row`` on."""
    rows = range(first_row, first_row + table.num_rows)
    if not table.column_names:
        return [f"{file_uri}#{row}" for row in rows]
    values = table.column(0).to_pylist()
    return [f"{file_uri}#{v if v is not None else row}" for row, v in zip(rows, values)]


def parquet_rows(file_uri: str, wanted: dict[str, Any], storage: StorageConfig) -> Iterator[tuple[str, bytes, None]]:
    """(key, image bytes, no sidecar) of each wanted row, in row order."""
    with open_file(file_uri, storage) as fh:
        parquet = pq.ParquetFile(fh)
        schema = parquet.schema_arrow
        image_column = bytes_column(schema)
        key_columns = _key_columns(schema)
        row = 0
        for part in parquet.iter_batches(batch_size=256, columns=key_columns + [image_column]):
            table = pa.Table.from_batches([part])
            keys = _row_keys(file_uri, table.select(key_columns), row)
            images = table.column(image_column).to_pylist()
            row += table.num_rows
            for key, value in zip(keys, images, strict=True):
                if key in wanted:
                    yield key, _image_bytes(value), None


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value is not None else b""
