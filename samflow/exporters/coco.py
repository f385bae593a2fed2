"""COCO / SA-1B JSON from the images and annotations tables.

COCO wants integer ids, so images and annotations are numbered in a stable order (by item_id,
then annotation_id); the samflow ids are kept alongside (``samflow_item_id``,
``samflow_annotation_id``) so rows can be joined back. Categories: 1 is "object" (masks without
a label: class-agnostic ones), then the run's vocabulary in its order (concept and zero-shot
labels), then any other label found, sorted; every annotation has its ``category_id``. A concept
mask's ``score`` is its SAM 3 score (it has no predicted IoU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

UNLABELLED = "object"


def to_coco(images: pa.Table, annotations: pa.Table, vocabulary: Sequence[str] = ()) -> dict[str, Any]:
    image_rows = sorted(images.to_pylist(), key=lambda r: r["item_id"])
    image_ids = {row["item_id"]: index + 1 for index, row in enumerate(image_rows)}
    ann_rows = sorted(
        (r for r in annotations.to_pylist() if r["item_id"] in image_ids),
        key=lambda r: r["annotation_id"],
    )
    known = [name for name in dict.fromkeys(vocabulary) if name != UNLABELLED]
    others = sorted({r["label"] for r in ann_rows if r["label"]} - set(known) - {UNLABELLED})
    categories = [UNLABELLED, *known, *others]
    category_ids = {name: index + 1 for index, name in enumerate(categories)}
    return {
        "info": {"description": "samflow annotations", "version": "1.0"},
        "images": [_image(row, image_ids[row["item_id"]]) for row in image_rows],
        "annotations": [
            _annotation(row, index + 1, image_ids[row["item_id"]], category_ids)
            for index, row in enumerate(ann_rows)
        ],
        "categories": [{"id": category_ids[n], "name": n, "supercategory": n} for n in categories],
    }


def _image(row: dict[str, Any], image_id: int) -> dict[str, Any]:
    return {
        "id": image_id,
        "file_name": row["uri"],
        "width": row["width"],
        "height": row["height"],
        "frame_index": row["frame_index"],
        "samflow_item_id": row["item_id"],
    }


def _annotation(
    row: dict[str, Any], ann_id: int, image_id: int, category_ids: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_ids[row["label"] or UNLABELLED],
        "segmentation": {"size": list(row["segmentation"]["size"]), "counts": row["segmentation"]["counts"]},
        "area": row["area"],
        "bbox": list(row["bbox"]),
        "iscrowd": 0,
        "score": row["predicted_iou"] if row["predicted_iou"] is not None else row["label_score"],
        "predicted_iou": row["predicted_iou"],
        "stability_score": row["stability_score"],
        "point_coords": row["point_coords"],
        "crop_box": row["crop_box"],
        "source": row["source"],
        "label_score": row["label_score"],
        "verified": row.get("verified"),
        "verify_score": row.get("verify_score"),
        "track_id": row["track_id"],
        "samflow_annotation_id": row["annotation_id"],
    }
