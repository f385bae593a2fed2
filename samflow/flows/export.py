"""``samflow export coco DST OUT.json`` and ``samflow export review DST OUT.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from samflow.flows.catalog import Catalog
from samflow.flows.config import StorageConfig
from samflow.schemas import tables
from samflow.schemas.coco import to_coco


def export_coco(dst: str, out: Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    catalog = Catalog(dst, storage or StorageConfig())
    images = catalog.read_table("images")
    if images is None:
        raise SystemExit(f"samflow export: no committed images under {dst}")
    annotations = catalog.read_table("annotations")
    if annotations is None:
        annotations = tables.ANNOTATIONS.empty_table()
    coco = to_coco(images, annotations, vocabulary=run_vocabulary(catalog))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    return {"out": str(out), "images": len(coco["images"]), "annotations": len(coco["annotations"])}


def export_review(
    dst: str, out: Path, min_score: float = 0.5, sources: list[str] | None = None,
    storage: StorageConfig | None = None,
) -> dict[str, Any]:
    """Label Studio tasks for the masks to review (OUT.json) and their labeling config (OUT.xml)."""
    from samflow.exporters.review import to_label_studio

    catalog = Catalog(dst, storage or StorageConfig())
    images = catalog.read_table("images")
    if images is None:
        raise SystemExit(f"samflow export: no committed images under {dst}")
    annotations = catalog.read_table("annotations")
    if annotations is None:
        annotations = tables.ANNOTATIONS.empty_table()
    tasks, config = to_label_studio(images, _with_columns(annotations), min_score=min_score,
                                    sources=sources or ["concept"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks))
    config_path = out.with_suffix(".xml")
    config_path.write_text(config)
    masks = sum(len(task["predictions"][0]["result"]) for task in tasks)
    return {"out": str(out), "label_config": str(config_path), "tasks": len(tasks), "masks": masks}


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
