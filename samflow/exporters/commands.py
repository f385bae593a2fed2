"""``samflow export coco|review|mot|ytvis DST OUT``: committed tables -> other tools' formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from samflow.config import StorageConfig
from samflow.exporters.coco import to_coco
from samflow.exporters.semi import SemiParams
from samflow.schemas import tables
from samflow.store.catalog import Catalog


def export_coco(dst: str, out: Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    catalog = Catalog(dst, storage or StorageConfig())
    images, annotations = committed_tables(catalog, dst)
    coco = to_coco(images, annotations, vocabulary=run_vocabulary(catalog))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    return {"out": str(out), "images": len(coco["images"]), "annotations": len(coco["annotations"])}


def export_review(
    dst: str, out: Path, min_score: float = 0.5, sources: list[str] | None = None,
    storage: StorageConfig | None = None, semi: SemiParams | None = None,
) -> dict[str, Any]:
    """Label Studio tasks for the masks to review (OUT.json) and their labeling config (OUT.xml).
    With ``semi``: the semi-automatic stage's tasks (samflow.exporters.semi)."""
    from samflow.exporters.review import to_label_studio
    from samflow.exporters.semi import semi_tasks

    images, annotations = committed_tables(Catalog(dst, storage or StorageConfig()), dst)
    if semi is not None:
        tasks, config, counts = semi_tasks(images, _with_columns(annotations), semi)
    else:
        tasks, config = to_label_studio(images, _with_columns(annotations), min_score=min_score,
                                        sources=sources or ["concept"])
        counts = {"tasks": len(tasks), "masks": sum(len(task["predictions"][0]["result"]) for task in tasks)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks))
    config_path = out.with_suffix(".xml")
    config_path.write_text(config)
    return {"out": str(out), "label_config": str(config_path), **counts}


def _with_columns(annotations):
    """Tables written before a column existed read without it: add it as nulls."""
    for field in tables.ANNOTATIONS:
        if field.name not in annotations.column_names:
            annotations = annotations.append_column(field, pa.nulls(annotations.num_rows, field.type))
    return annotations


def run_vocabulary(catalog: Catalog) -> list[str]:
    """labels.vocabulary of every run into DST, oldest run first, each label once."""
    labels: list[str] = []
    for manifest in catalog.run_manifests():
        labels += manifest.get("config", {}).get("labels", {}).get("vocabulary", [])
    return list(dict.fromkeys(labels))


class NothingToExport(Exception):
    """DST holds no committed rows the export needs (a user mistake: wrong path, no run yet)."""


def committed_tables(catalog: Catalog, dst: str) -> tuple[pa.Table, pa.Table]:
    """The committed images and annotations of DST (annotations may be empty); a DST without
    images is the user's mistake (wrong path, no run yet)."""
    images = catalog.read_table("images")
    if images is None:
        raise NothingToExport(f"no committed images under {dst}")
    annotations = catalog.read_table("annotations")
    if annotations is None:
        annotations = tables.ANNOTATIONS.empty_table()
    return images, annotations


def _video_tables(dst: str, storage: StorageConfig | None) -> tuple[pa.Table, pa.Table]:
    return committed_tables(Catalog(dst, storage or StorageConfig()), dst)


def export_mot(dst: str, out_dir: Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    """``samflow export mot DST OUT_DIR``: one MOTChallenge ``<video>.txt`` per committed video,
    and ``videos.json`` naming the video (URI, size, frames) behind each file."""
    from samflow.exporters.mot import to_mot

    per_video = to_mot(*_video_tables(dst, storage))
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, (video, text) in per_video.items():
        (out_dir / f"{name}.txt").write_text(text)
        index[name] = {"uri": video.uri, "width": video.width, "height": video.height,
                       "frames": [f["frame_index"] for f in video.frames]}
    (out_dir / "videos.json").write_text(json.dumps(index, indent=1))
    lines = sum(text.count("\n") for _, text in per_video.values())
    return {"out": str(out_dir), "videos": len(per_video), "boxes": lines}


def export_ytvis(dst: str, out: Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    """``samflow export ytvis DST OUT.json``: YouTube-VIS style JSON of the committed videos."""
    from samflow.exporters.ytvis import to_ytvis

    data = to_ytvis(*_video_tables(dst, storage))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return {"out": str(out), "videos": len(data["videos"]), "tracks": len(data["annotations"])}
