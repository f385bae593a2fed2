"""Vectors out of committed Parquet, one record batch at a time (never the whole table).

Image vectors live in ``embeddings/`` (``embedding``: fixed-size list of float32); mask vectors
in ``annotations.embedding`` (a variable list today, a fixed-size list later: both are read).
Every batch carries the id columns the index keeps beside each vector.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

KINDS = ("image", "mask")
TABLE_OF_KIND = {"image": "embeddings", "mask": "annotations"}
BATCH_ROWS = 16384

# Id-map columns per kind (``id`` and ``uri`` are added by the builder / the uri lookup).
META_COLUMNS = {
    "image": ["item_id"],
    "mask": ["item_id", "annotation_id", "bbox", "label"],
}


@dataclass
class VectorBatch:
    vectors: np.ndarray  # (n, d) float32, unit length
    meta: pa.Table  # one row per vector: item_id, annotation_id (masks), uri, ...


def vector_matrix(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (m, d) float32, row mask (n,) bool) from a list or fixed-size-list column.

    Rows with a null or empty vector (a mask without an embedding) are left out; the mask says
    which rows the vectors belong to. All vectors must have one width.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    keep = lengths > 0
    if not keep.any():
        return np.zeros((0, 0), dtype=np.float32), keep
    widths = np.unique(lengths[keep])
    if len(widths) != 1:
        raise ValueError(f"vectors of different widths in one table: {widths.tolist()}")
    kept = array.filter(pa.array(keep))
    values = pc.list_flatten(kept).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return normalise(values.reshape(-1, int(widths[0]))), keep


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Unit rows (inner product = cosine); zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class UriLookup:
    """item_id -> uri from the images table (two string columns, not the vectors)."""

    def __init__(self, fs: pafs.FileSystem, image_files: Sequence[str]) -> None:
        if image_files:
            table = ds.dataset(list(image_files), filesystem=fs, format="parquet").to_table(
                columns=["item_id", "uri"]
            )
        else:
            table = pa.table({"item_id": pa.array([], pa.string()), "uri": pa.array([], pa.string())})
        self.item_ids = table.column("item_id").combine_chunks()
        self.uris = table.column("uri").combine_chunks()

    def __call__(self, item_ids: pa.Array) -> pa.Array:
        positions = pc.index_in(item_ids, value_set=self.item_ids)
        return pc.take(self.uris, positions)


def iter_vectors(
    fs: pafs.FileSystem,
    files: Sequence[str],
    kind: str,
    uris: UriLookup,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[VectorBatch]:
    """Stream one Parquet file's vectors and id columns, ``batch_rows`` at a time."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not files:
        return
    dataset = ds.dataset(list(files), filesystem=fs, format="parquet")
    names = set(dataset.schema.names)
    columns = [c for c in META_COLUMNS[kind] if c in names] + ["embedding"]
    for batch in dataset.to_batches(columns=columns, batch_size=batch_rows):
        vectors, keep = vector_matrix(batch.column("embedding"))
        if not len(vectors):
            continue
        meta = pa.Table.from_batches([batch.drop_columns(["embedding"])]).filter(pa.array(keep))
        meta = _complete(meta, kind)
        meta = meta.append_column("uri", uris(meta.column("item_id").combine_chunks()))
        yield VectorBatch(vectors, meta)


def _complete(meta: pa.Table, kind: str) -> pa.Table:
    """The same id-map columns whatever the table version wrote (missing ones as nulls)."""
    types = {"item_id": pa.string(), "annotation_id": pa.string(),
             "bbox": pa.list_(pa.float32()), "label": pa.string()}
    wanted = META_COLUMNS[kind] if kind == "mask" else ["item_id", "annotation_id"]
    arrays = []
    for name in wanted:
        if name in meta.column_names:
            arrays.append(meta.column(name).cast(types[name]))
        else:
            arrays.append(pa.nulls(meta.num_rows, types[name]))
    return pa.table(arrays, names=wanted)
