"""Label Studio review queue: the masks the machines doubt, as tasks with brush predictions.

    tasks, config = to_label_studio(images, annotations, min_score=0.5)

A mask goes to review when CLIP's verification failed (``verified`` is false) or its
``label_score`` is under ``min_score``; by default only concept masks (SAM 3) are considered.
One task per image holding such masks: ``data.image`` is the image URI (Label Studio resolves
s3:// through a cloud storage connection), ``predictions[0].result`` one ``brushlabels`` region
per mask, its pixels in Label Studio's brush RLE (label-studio-sdk's converter), labelled with
the mask's label. ``config`` is a labeling config (Image + BrushLabels with every label used),
which Label Studio needs for the predictions to show.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from samflow.schemas import rle

FROM_NAME = "label"
TO_NAME = "image"
MODEL_VERSION = "samflow"
UNLABELLED = "object"


def needs_review(annotations: pa.Table, min_score: float, sources: Iterable[str] = ("concept",)) -> pa.Table:
    """The rows of ``sources`` that failed verification or score under ``min_score``."""
    in_sources = pc.is_in(annotations["source"], value_set=pa.array(list(sources), pa.string()))
    failed = pc.equal(annotations["verified"], False)
    low = pc.less(annotations["label_score"], pa.scalar(min_score, pa.float32()))
    doubtful = pc.or_(pc.fill_null(failed, False), pc.fill_null(low, False))
    return annotations.filter(pc.and_(pc.fill_null(in_sources, False), doubtful))


def to_label_studio(
    images: pa.Table, annotations: pa.Table, *, min_score: float = 0.5, sources: Iterable[str] = ("concept",)
) -> tuple[list[dict[str, Any]], str]:
    """(Label Studio tasks, labeling config) for the masks that need review."""
    chosen = needs_review(annotations, min_score, sources).to_pylist()
    by_item: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(chosen, key=lambda r: r["annotation_id"]):
        by_item.setdefault(row["item_id"], []).append(row)
    uris = {row["item_id"]: row for row in images.select(["item_id", "uri", "frame_index"]).to_pylist()}
    tasks = [_task(uris[item], rows) for item, rows in sorted(by_item.items()) if item in uris]
    labels = sorted({_label(row) for rows in by_item.values() for row in rows})
    return tasks, labeling_config(labels)


def labeling_config(labels: list[str]) -> str:
    choices = "".join(f"<Label value={quoteattr(label)}/>" for label in labels)
    return (f'<View><Image name="{TO_NAME}" value="$image"/>'
            f'<BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">{choices}</BrushLabels></View>')


def brush_rle(mask: np.ndarray) -> list[int]:
    """A boolean (H, W) mask in Label Studio's brush RLE (RGBA bytes, alpha 255 inside)."""
    from label_studio_sdk.converter.brush import mask2rle

    return mask2rle(np.asarray(mask, dtype=np.uint8) * 255)


def _label(row: dict[str, Any]) -> str:
    return row["label"] or UNLABELLED


def _task(image: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    regions = [region(row) for row in rows]
    scores = [row["label_score"] for row in rows if row["label_score"] is not None]
    return {
        "data": {"image": image["uri"], "samflow_item_id": image["item_id"], "frame_index": image["frame_index"]},
        "predictions": [{
            "model_version": MODEL_VERSION,
            "score": float(min(scores)) if scores else None,
            "result": regions,
        }],
    }


def region(row: dict[str, Any], mask: np.ndarray | None = None) -> dict[str, Any]:
    """One mask as a brush region (its id is the annotation id); ``mask``: the decoded RLE."""
    mask = rle.decode(row["segmentation"]) if mask is None else mask
    height, width = mask.shape
    return {
        "id": row["annotation_id"],
        "type": "brushlabels",
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [_label(row)]},
        "score": row["label_score"],
        "meta": {"samflow_annotation_id": row["annotation_id"], "source": row["source"],
                 "verified": row["verified"], "verify_score": row["verify_score"]},
    }
