"""Typed row builders: one pipeline batch -> the rows it contributes to each output table.

A batch (see ``samflow.actors.batch``) holds whole items; a healthy row yields one ``images`` row,
its masks (the Arrow ``masks`` column, ``samflow.schemas.masks``) as ``annotations`` rows and its
vector as an ``embeddings`` row; a failed row yields exactly one ``errors`` row. A video's
``tracks`` rows come from whichever row carries them, failed or not. So inputs = image
rows + error rows, always. Mask fields go from the batch's Arrow column to the table as they are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from samflow.schemas import masks as mask_column
from samflow.schemas import tables
from samflow.schemas.ids import annotation_id


def build_tables(
    batch: dict[str, Any], run_id: str, embed_model: str | None = None
) -> dict[str, pa.Table]:
    n = len(batch["uri"])
    error_type = [str(v) for v in batch["error_type"]]
    ok = [r for r in range(n) if not error_type[r]]
    failed = [r for r in range(n) if error_type[r]]
    out = {
        "images": _images(batch, ok, run_id),
        "errors": _errors(batch, failed, run_id),
        "annotations": _annotations(batch, ok, _embedding_dim(batch)),
    }
    if "embedding" in batch and embed_model:
        out["embeddings"] = _embeddings(batch, ok, embed_model)
    for family in tables.EXTRA_EMBEDDING_FAMILIES:  # a second embedding model (e.g. DINOv2)
        column = f"embedding_{family}"
        if column in batch and ok:
            out[tables.embeddings_table(family)] = _embeddings(batch, ok, str(batch[f"{column}_model"][ok[0]]), column)
    if "tracks" in batch:  # from every row: a video's last row carries them even when it failed
        out["tracks"] = _tracks(batch, list(range(n)))
    return out


def _images(batch: dict[str, np.ndarray], rows: list[int], run_id: str) -> pa.Table:
    def col(name: str, cast: Any) -> list[Any]:
        return [cast(batch[name][r]) for r in rows]

    timestamps = [float(batch["timestamp_s"][r]) for r in rows]
    upscale = batch.get("upscale_factor")
    sidecars = batch.get("meta_json")  # "" or absent: the input had no sidecar
    source_ids = batch.get("source_id")  # "" or absent: the input had no manifest id
    return pa.Table.from_pydict(
        {
            "item_id": col("item_id", str),
            "uri": col("uri", str),
            "frame_index": col("frame_index", int),
            "timestamp_s": [None if math.isnan(t) else t for t in timestamps],
            "width": col("width", int),
            "height": col("height", int),
            "upscale_factor": [1.0 if upscale is None else float(upscale[r]) for r in rows],
            "run_id": [run_id] * len(rows),
            "meta_json": [None if sidecars is None else str(sidecars[r] or "") or None for r in rows],
            "source_id": [None if source_ids is None else str(source_ids[r] or "") or None for r in rows],
        },
        schema=tables.IMAGES,
    )


def _errors(batch: dict[str, np.ndarray], rows: list[int], run_id: str) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "uri": [str(batch["uri"][r]) for r in rows],
            "stage": [str(batch["error_stage"][r]) for r in rows],
            "error_type": [str(batch["error_type"][r]) for r in rows],
            "message": [str(batch["error_message"][r]) for r in rows],
            "run_id": [run_id] * len(rows),
        },
        schema=tables.ERRORS,
    )


def _embedding_dim(batch: dict[str, Any]) -> int | None:
    """The run's embed width: the image vectors' (the embed stage always writes them)."""
    vectors = batch.get("embedding")
    return None if vectors is None else int(np.asarray(vectors).shape[1])


def _annotations(batch: dict[str, Any], rows: list[int], dim: int | None) -> pa.Table:
    schema = tables.annotations_schema(dim)
    column = batch.get(mask_column.COLUMN)
    if column is None or not rows:
        return schema.empty_table()
    kept = column.take(pa.array(rows, pa.int64()))
    found = mask_column.flat(kept)
    row_of = mask_column.row_of_mask(kept)
    offsets = mask_column.offsets_of(kept)
    items = [str(batch["item_id"][r]) for r in rows]
    data: dict[str, pa.Array] = {
        "annotation_id": pa.array(
            [annotation_id(items[r], m - int(offsets[r])) for m, r in enumerate(row_of.tolist())],
            pa.string(),
        ),
        "item_id": pa.array([items[r] for r in row_of.tolist()], pa.string()),
    }
    for field in schema:
        if field.name in data:
            continue
        if found.type.get_field_index(field.name) >= 0:
            data[field.name] = found.field(field.name).cast(field.type)
        else:
            data[field.name] = pa.nulls(len(found), field.type)
    return pa.Table.from_arrays([data[f.name] for f in schema], schema=schema)


def _embeddings(batch: dict[str, np.ndarray], rows: list[int], model: str, column: str = "embedding") -> pa.Table:
    vectors = np.asarray(batch[column], dtype=np.float32)
    dim = vectors.shape[1]
    flat = pa.array(vectors[rows].reshape(-1), type=pa.float32())
    return pa.Table.from_arrays(
        [
            pa.array([str(batch["item_id"][r]) for r in rows], pa.string()),
            pa.array([model] * len(rows), pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, dim),
        ],
        schema=tables.embeddings_schema(dim),
    )


def _tracks(batch: dict[str, Any], rows: list[int]) -> pa.Table:
    """The track summaries the track stage put on a video's last row (``tracks`` column,
    ``tables.TRACK_LIST``), whether that row is a frame or an error."""
    column = batch["tracks"]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    found = column.take(pa.array(rows, pa.int64())).flatten()
    return pa.Table.from_arrays([found.field(f.name).cast(f.type) for f in tables.TRACKS], schema=tables.TRACKS)
