"""A committed run whose masks the test chooses: images of the sample scenes (or any files) with
given masks, written through the writer's own row builders and committed with the catalog's
marker and a run manifest, so every reader sees an ordinary annotate run."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from samflow.actors.batch import object_column
from samflow.config import StorageConfig
from samflow.schemas import masks as mask_column
from samflow.schemas import rle
from samflow.schemas.ids import item_id, shard_id
from samflow.schemas.rows import build_tables
from samflow.store.catalog import RUNS, Catalog, ShardResult

ROOT = Path(__file__).resolve().parents[2]


def samflow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command line as a user runs it (this tree's code, the test S3 server's environment)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "samflow.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300, check=False)


def mask_record(mask: np.ndarray, score: float = 0.9, source: str = "grid", label: str | None = None,
                stability: float | None = 0.95, verified: bool | None = None) -> dict[str, Any]:
    """An SA-1B record of a boolean mask, as the segment stage emits one."""
    encoded = rle.encode(mask)
    return {
        "segmentation": encoded, "bbox": rle.to_bbox(encoded), "area": int(mask.sum()),
        "predicted_iou": score, "stability_score": stability, "point_coords": [[1.0, 1.0]],
        "crop_box": [0.0, 0.0, float(mask.shape[1]), float(mask.shape[0])], "source": source,
        "label": label, "label_score": None, "verified": verified, "verify_score": None,
    }


def write_run(dst: str, src: str, uris: list[str], sizes: list[tuple[int, int]],
              records: list[list[dict[str, Any]]], run_id: str = "20260101T000000Z-abcdef",
              storage: StorageConfig | None = None) -> list[str]:
    """Commit one shard of ``uris`` ((height, width) each) with their mask records; returns the
    item ids, in order."""
    catalog = Catalog(dst, storage or StorageConfig())
    n = len(uris)
    items = [item_id(uri) for uri in uris]
    empty = object_column([""] * n)
    batch = {
        "uri": object_column(uris), "item_id": object_column(items),
        "frame_index": np.zeros(n, np.int32), "timestamp_s": np.full(n, np.nan),
        "height": np.array([h for h, _ in sizes], np.int32), "width": np.array([w for _, w in sizes], np.int32),
        "error_stage": empty, "error_type": empty, "error_message": empty,
        "masks": mask_column.from_records(records),
    }
    shard = shard_id(items)
    rows = {}
    for table, data in build_tables(batch, run_id).items():
        if data.num_rows:
            sink = io.BytesIO()
            pq.write_table(data, sink)
            catalog.put_staged(run_id, table, shard, sink.getvalue())
            rows[table] = data.num_rows
    catalog.commit(run_id, ShardResult(shard, uris, rows))
    catalog.finish_run(run_id)
    now = dt.datetime.now(dt.UTC).isoformat()
    catalog.write_json(catalog.path(RUNS, f"{run_id}.json"), {
        "run_id": run_id, "src": src, "dst": dst, "started_at": now, "finished_at": now,
        "counts": {"inputs": n, "images": n, "errors": 0, "annotations": rows.get("annotations", 0)},
        "timings_s": {"total": 1.0}, "models": {}, "config": {},
    })
    return items


def upload_scenes(s3_fs: Any, local_dir: Path, bucket_prefix: str) -> list[str]:
    """Copy the sample images (not their _gt/) to ``s3://bucket_prefix``; returns their URIs."""
    uris = []
    for path in sorted(p for p in local_dir.iterdir() if p.is_file()):
        key = f"{bucket_prefix.removeprefix('s3://')}/{path.name}"
        s3_fs.pipe_file(key, path.read_bytes())
        uris.append(f"s3://{key}")
    return uris
