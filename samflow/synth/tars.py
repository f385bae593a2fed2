"""The write task: a batch of checked candidates -> one staged WebDataset tar in SA-1B's layout
(the kept images) and one staged Parquet file of every candidate (kept or not, with its scores).

Each kept image is two members with one WebDataset key: ``sa_N.jpg`` and ``sa_N.json``, the
sidecar SA-1B ships: ``image`` (id, size, file name) and ``annotations`` (one per conditioning
mask: COCO RLE ``segmentation``, pycocotools' ``bbox`` and ``area``, ``id``, plus ``label``,
``source``, ``source_id`` and the mask's ``fidelity_iou``), and ``synth`` (key, prompt, seed,
variant, source item, scores, models). ``samflow annotate SYN --set input.sa1b_ground_truth=true``
turns the annotations into ground-truth rows equal to the conditioning masks.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as coco_mask

from samflow.config import StorageConfig
from samflow.schemas.ids import shard_id
from samflow.synth.fidelity import VERIFIED
from samflow.synth.store import CANDIDATES, TAR, SynthStore

SHARDS = pa.schema([
    ("shard", pa.string()), ("keys", pa.list_(pa.string())), ("kept", pa.int64()), ("dropped", pa.int64()),
    ("reasons", pa.map_(pa.string(), pa.int64())), ("generate_s", pa.float64()), ("verify_s", pa.float64()),
    ("models", pa.map_(pa.string(), pa.string())),
])
_RECORD_COLUMNS = [f.name for f in VERIFIED if f.name not in ("image", "condition")]


def sample_name(key: str) -> str:
    """``sa_N``: SA-1B's naming, N a number from the candidate's key (unique within SYN)."""
    return f"sa_{int(key[:13], 16)}"


def sidecar(row: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    name = sample_name(row["key"])
    annotations = []
    for index, (mask, fidelity) in enumerate(zip(row["masks"], row["mask_ious"], strict=True)):
        segmentation = mask["segmentation"]
        encoded = {"size": list(segmentation["size"]), "counts": segmentation["counts"].encode("ascii")}
        annotations.append({
            "id": index, "segmentation": {"size": list(segmentation["size"]), "counts": segmentation["counts"]},
            "bbox": [float(v) for v in coco_mask.toBbox(encoded)], "area": int(coco_mask.area(encoded)),
            "label": mask["label"], "source": mask["source"], "source_id": mask["source_id"],
            "fidelity_iou": fidelity,
        })
    return {
        "image": {"image_id": int(name[3:]), "width": row["width"], "height": row["height"], "file_name": f"{name}.jpg"},
        "annotations": annotations,
        "synth": {
            "key": row["key"], "prompt": row["prompt"], "seed": row["seed"], "variant": row["variant"],
            "source": {"item_id": row["item_id"], "uri": row["uri"], "height": row["source_height"],
                       "width": row["source_width"]},
            "scores": {"fidelity": row["fidelity"], "clip": row["clip_score"]},
            **extra,
        },
    }


def tar_bytes(rows: list[dict[str, Any]], extra: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for row in sorted(rows, key=lambda r: r["key"]):
            name = sample_name(row["key"])
            for member, data in ((f"{name}.jpg", row["image"]),
                                 (f"{name}.json", json.dumps(sidecar(row, extra), sort_keys=True).encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def stage_shard(batch: pa.Table, syn: str, storage: StorageConfig, run_id: str, extra: dict[str, Any]) -> pa.Table:
    """Stage one shard of candidates (a Ray Data batch function); one row describes it."""
    store = SynthStore(syn, storage)
    rows = batch.to_pylist()
    keys = sorted(row["key"] for row in rows)
    shard = shard_id(keys)
    kept = [row for row in rows if row["kept"]]
    if kept:
        store.put_staged(run_id, f"{shard}{TAR}", tar_bytes(kept, extra))
    records = io.BytesIO()
    pq.write_table(batch.select(_RECORD_COLUMNS), records)
    store.put_staged(run_id, f"{CANDIDATES}/{shard}.parquet", records.getvalue())
    for row in rows:
        if row["condition"]:
            store.put_condition(row["key"], row["condition"])
    reasons = Counter(row["drop_reason"] for row in rows if not row["kept"])
    models = {stage: info["model"] for stage in ("generate", "verify") for info in [rows[0][f"{stage}_info"]] if info}
    hashes = {f"{stage}_sha256": info["checkpoint_sha256"] or "" for stage in ("generate", "verify")
              for info in [rows[0][f"{stage}_info"]] if info}
    summary = {
        "shard": shard, "keys": keys, "kept": len(kept), "dropped": len(rows) - len(kept),
        "reasons": list(reasons.items()),
        "generate_s": sum((row["generate_info"] or {}).get("busy_s", 0.0) for row in rows),
        "verify_s": sum((row["verify_info"] or {}).get("busy_s", 0.0) for row in rows),
        "models": list({**models, **hashes}.items()),
    }
    return pa.Table.from_pylist([summary], schema=SHARDS)
