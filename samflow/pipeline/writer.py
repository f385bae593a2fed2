"""The pipeline's writer: one batch's rows of every table staged as a shard (run as Ray Data tasks).

Kept apart from samflow.pipeline.graph, which imports every model stage (and torch): a Ray
worker that only writes shards imports this light module, so starting one mid-run costs the
model actors no CPU (the pipeline module imports torch, seconds of CPU on a small node).
"""

from __future__ import annotations

import io
import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from samflow.actors.batch import arrow_batches, describe, mark_error
from samflow.inputs.formats import container_of
from samflow.pipeline.ground_truth import add_ground_truth
from samflow.schemas.ids import item_key, shard_id
from samflow.schemas.rows import build_tables
from samflow.schemas.tables import SHARD_RESULT, STAGE_META_PREFIX, TRACK_LIST
from samflow.store.catalog import DONE, Catalog
from samflow.store.doneset import done_table

log = logging.getLogger(__name__)


@arrow_batches
def stage_shard(
    batch: dict[str, Any], *, dst: str, storage: Any, run_id: str, embed_model: str | None,
    ground_truth: bool = False,
) -> dict[str, np.ndarray]:
    """Write one batch's rows of every table to the staging area; return what the driver commits.
    ``ground_truth``: SA-1B sidecar annotations become rows too (samflow/pipeline/ground_truth.py)."""
    if ground_truth:
        add_ground_truth(batch)
    keys = _input_keys(batch)
    uris = sorted(set(keys))
    shard = shard_id(_row_keys(batch))
    catalog = Catalog(dst, storage)
    rows: dict[str, int] = {}
    for table, data in _tables_per_row_safe(batch, run_id, embed_model).items():
        rows[table] = data.num_rows
        if data.num_rows:
            buffer = io.BytesIO()
            pq.write_table(data, buffer, compression="zstd")
            catalog.put_staged(run_id, table, shard, buffer.getvalue())
    # The keys this shard finishes: committed with it, they are what the next plan skips.
    buffer = io.BytesIO()
    pq.write_table(done_table(uris, [container_of(uri) for uri in uris]), buffer)
    catalog.put_staged(run_id, DONE, shard, buffer.getvalue())
    rows[DONE] = len(uris)
    frames = sorted({
        key for key, seconds in zip(keys, batch["timestamp_s"], strict=True)
        if not math.isnan(float(seconds))  # only sampled video frames carry a timestamp
    })
    result = {"shard": [shard], "uris": [uris], "frames": [frames], "rows": [list(rows.items())],
              "meta": [_stage_batches(batch)]}
    return {field.name: pa.array(result[field.name], type=field.type) for field in SHARD_RESULT}


def _input_keys(batch: dict[str, Any]) -> list[str]:
    """Each row's input key (``item_key``: its manifest id, else its URI), what the done-set holds."""
    source_ids = batch.get("source_id")
    return [item_key(str(uri), "" if source_ids is None else str(source_ids[row] or ""))
            for row, uri in enumerate(batch["uri"])]


def _stage_batches(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stage batch whose rows are in this shard, once: {stage, info (STAGE_META)}."""
    found = []
    for column, values in batch.items():
        if not column.startswith(STAGE_META_PREFIX):
            continue
        seen: dict[str, dict[str, Any]] = {}
        for info in values.to_pylist():
            if info is not None:
                seen.setdefault(info["batch"], info)
        found += [{"stage": column[len(STAGE_META_PREFIX):], "info": info} for info in seen.values()]
    return found


def _row_keys(batch: dict[str, np.ndarray]) -> list[str]:
    """One key per row: the item (URI and frame) and whether it is an error row. Frames of one
    video in several shards, or a video's frames and its cut-short error row, never share a
    shard name, while a retried write of the same rows gets the same name."""
    return [
        f"{item}:{'error' if error else 'image'}"
        for item, error in zip(batch["item_id"], batch["error_type"], strict=True)
    ]


def _tables_per_row_safe(
    batch: dict[str, np.ndarray], run_id: str, embed_model: str | None
) -> dict[str, pa.Table]:
    """``build_tables`` for the batch; if one row cannot be turned into rows (a stage emitted
    something malformed), build row by row and file the bad rows as ``write`` errors, because
    Ray Data fails the whole block, and then the run, on an exception."""
    try:
        return build_tables(batch, run_id, embed_model)
    except Exception as exc:  # noqa: BLE001 - isolate the bad row below
        log.warning("shard batch failed to build (%s); building row by row", describe(exc))
    parts: dict[str, list[pa.Table]] = defaultdict(list)
    for row in range(len(batch["uri"])):
        one = {name: column[row : row + 1] for name, column in batch.items()}
        try:
            tables = build_tables(one, run_id, embed_model)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            mark_error(one, 0, "write", exc)
            tables = _error_row(one, run_id)
        for table, data in tables.items():
            parts[table].append(data)
    return {table: pa.concat_tables(found) for table, found in parts.items()}


def _error_row(one: dict[str, np.ndarray], run_id: str) -> dict[str, pa.Table]:
    """A row that could not be written, as its error row; with the video's track summaries it
    carries when they are sound (a failed row keeps its video's tracks)."""
    try:
        built = build_tables(one, run_id, None)
    except Exception:  # noqa: BLE001 - the tracks themselves were malformed: the error row alone
        built = build_tables({**one, "tracks": pa.array([[]], type=TRACK_LIST)}, run_id, None)
    return {table: built[table] for table in ("errors", "tracks") if table in built}
