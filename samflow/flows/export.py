"""``samflow export coco DST OUT.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    coco = to_coco(images, annotations)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    return {"out": str(out), "images": len(coco["images"]), "annotations": len(coco["annotations"])}
