"""Typed row builders: one pipeline batch -> the rows it contributes to each output table.

A batch (see ``samflow.actors.batch``) holds whole items; a healthy row yields one ``images`` row,
its masks as ``annotations`` rows and its vector as an ``embeddings`` row; a failed row yields
exactly one ``errors`` row. So inputs = image rows + error rows, always.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa

from samflow.schemas import tables
from samflow.schemas.ids import annotation_id


def build_tables(
    batch: dict[str, np.ndarray], run_id: str, embed_model: str | None = None
) -> dict[str, pa.Table]:
    n = len(batch["uri"])
    error_type = [str(v) for v in batch["error_type"]]
    ok = [r for r in range(n) if not error_type[r]]
    failed = [r for r in range(n) if error_type[r]]
    out = {
        "images": _images(batch, ok, run_id),
        "errors": _errors(batch, failed, run_id),
        "annotations": _annotations(batch, ok),
    }
    if "embedding" in batch and embed_model:
        out["embeddings"] = _embeddings(batch, ok, embed_model)
    if "tracks_json" in batch:
        out["tracks"] = _tracks(batch, ok)
    return out


def _images(batch: dict[str, np.ndarray], rows: list[int], run_id: str) -> pa.Table:
    def col(name: str, cast: Any) -> list[Any]:
        return [cast(batch[name][r]) for r in rows]

    timestamps = [float(batch["timestamp_s"][r]) for r in rows]
    upscale = batch.get("upscale_factor")
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


_RECORD_FIELDS = (
    "bbox",
    "area",
    "predicted_iou",
    "stability_score",
    "point_coords",
    "crop_box",
    "source",
    "proposal_score",
    "label",
    "label_score",
    "track_id",
    "embedding",
)


def _annotations(batch: dict[str, np.ndarray], rows: list[int]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in tables.ANNOTATIONS.names}
    masks_json = batch.get("annotations_json")
    for r in rows if masks_json is not None else []:
        item = str(batch["item_id"][r])
        for index, record in enumerate(json.loads(masks_json[r])):
            columns["annotation_id"].append(annotation_id(item, index))
            columns["item_id"].append(item)
            columns["segmentation"].append(record["segmentation"])
            for name in _RECORD_FIELDS:
                columns[name].append(record.get(name))
    return pa.Table.from_pydict(columns, schema=tables.ANNOTATIONS)


def _embeddings(batch: dict[str, np.ndarray], rows: list[int], model: str) -> pa.Table:
    vectors = np.asarray(batch["embedding"], dtype=np.float32)
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


def _tracks(batch: dict[str, np.ndarray], rows: list[int]) -> pa.Table:
    """The track summaries the track stage put on a video's last frame row (``tracks_json``)."""
    found = [track for r in rows if batch["tracks_json"][r] for track in json.loads(batch["tracks_json"][r])]
    return pa.Table.from_pylist(found, schema=tables.TRACKS)
