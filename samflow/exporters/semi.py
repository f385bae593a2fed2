"""The semi-automatic stage's review queue: the model's sure masks pre-accepted, people asked for
the rest.

    tasks, config, counts = semi_tasks(images, annotations, SemiParams())

A mask is sure when its predicted IoU and stability reach the thresholds (where it has them), its
verification did not fail, and a labelled mask's label score reaches ``min_score``; the others
are doubtful. Each image with a doubtful mask or an uncovered region becomes one task, the tasks
most in need first: its predictions hold every mask (``meta.pre_accepted`` true for the sure
ones, which a person leaves as they are to accept them; the doubtful ones carry their reasons)
and, in a control of their own (``todo``), the image's uncovered regions, largest first: what
no mask covers, split into connected parts. ``samflow review import`` ignores ``todo`` regions
left in an annotation; what people draw becomes an added mask. Images whose masks are all sure
and cover them get no task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa

from samflow.exporters.review import (
    FROM_NAME,
    MODEL_VERSION,
    TO_NAME,
    UNLABELLED,
    brush_rle,
    region,
)
from samflow.schemas import rle

TODO_NAME = "todo"  # the control holding uncovered-area hints; review import skips it
TODO_LABEL = "unannotated area"
POLYGON_NAME = "polygon"
GROUND_TRUTH = "ground_truth"


@dataclass(frozen=True)
class SemiParams:
    min_iou: float = 0.88  # SAM's automatic-stage filter
    min_stability: float = 0.95
    min_score: float = 0.5  # label score of a labelled (concept) mask
    max_uncovered: int = 5  # uncovered regions per image
    min_uncovered_fraction: float = 0.005  # of the image's pixels
    sources: tuple[str, ...] | None = None  # None: every source but ground truth


def doubts(row: dict[str, Any], params: SemiParams) -> list[str]:
    """Why a mask is doubtful (empty: it is sure)."""
    reasons = []
    if row.get("predicted_iou") is not None and row["predicted_iou"] < params.min_iou:
        reasons.append(f"predicted IoU {row['predicted_iou']:.2f} < {params.min_iou}")
    if row.get("stability_score") is not None and row["stability_score"] < params.min_stability:
        reasons.append(f"stability {row['stability_score']:.2f} < {params.min_stability}")
    if row.get("verified") is False:
        reasons.append("CLIP does not verify its label")
    if row.get("label") and row.get("label_score") is not None and row["label_score"] < params.min_score:
        reasons.append(f"label score {row['label_score']:.2f} < {params.min_score}")
    return reasons


def uncovered_regions(masks: Iterable[np.ndarray], height: int, width: int, params: SemiParams) -> list[np.ndarray]:
    """Connected parts of what no mask covers, largest first, at most ``max_uncovered`` of at least
    ``min_uncovered_fraction`` of the image each."""
    from skimage.measure import label as connected

    covered = np.zeros((height, width), dtype=bool)
    for mask in masks:
        covered |= mask
    parts, count = connected(~covered, connectivity=1, return_num=True)
    if not count:
        return []
    areas = np.bincount(parts.ravel(), minlength=count + 1)
    areas[0] = 0  # the covered pixels
    smallest = max(1, int(np.ceil(params.min_uncovered_fraction * height * width)))
    order = [int(k) for k in np.argsort(-areas, kind="stable") if areas[k] >= smallest]
    return [parts == k for k in order[: params.max_uncovered]]


def semi_tasks(images: pa.Table, annotations: pa.Table,
               params: SemiParams) -> tuple[list[dict[str, Any]], str, dict[str, int]]:
    """(Label Studio tasks, labeling config, counts) of the semi-automatic stage."""
    by_item: dict[str, list[dict[str, Any]]] = {}
    for row in annotations.to_pylist():
        if (row["source"] in params.sources) if params.sources else row["source"] != GROUND_TRUTH:
            by_item.setdefault(row["item_id"], []).append(row)
    counts = {"tasks": 0, "masks": 0, "pre_accepted": 0, "doubtful": 0, "uncovered_regions": 0,
              "images_all_sure": 0}
    tasks = []
    for image in sorted(images.to_pylist(), key=lambda r: r["item_id"]):
        rows = sorted(by_item.get(image["item_id"], []), key=lambda r: r["annotation_id"])
        task = _task(image, rows, params)
        if task is None:
            counts["images_all_sure"] += 1
            continue
        tasks.append(task)
        counts["masks"] += len(rows)
        counts["doubtful"] += task["data"]["doubtful"]
        counts["pre_accepted"] += len(rows) - task["data"]["doubtful"]
        counts["uncovered_regions"] += task["data"]["uncovered_regions"]
    tasks.sort(key=lambda t: (-t["data"]["doubtful"] - t["data"]["uncovered_regions"], t["data"]["samflow_item_id"]))
    counts["tasks"] = len(tasks)
    labels = sorted({row["label"] or UNLABELLED for rows in by_item.values() for row in rows} | {UNLABELLED})
    return tasks, semi_labeling_config(labels), counts


def _task(image: dict[str, Any], rows: list[dict[str, Any]], params: SemiParams) -> dict[str, Any] | None:
    masks = [rle.decode(row["segmentation"]) for row in rows]
    height, width = int(image["height"]), int(image["width"])
    gaps = uncovered_regions(masks, height, width, params)
    regions, doubtful = [], 0
    for row, mask in zip(rows, masks, strict=True):
        reasons = doubts(row, params)
        doubtful += bool(reasons)
        described = region(row, mask)
        described["meta"].update(pre_accepted=not reasons, doubts=reasons)
        regions.append(described)
    if not doubtful and not gaps:
        return None
    regions += [_todo(image["item_id"], index, gap) for index, gap in enumerate(gaps)]
    uncovered = float(sum(int(g.sum()) for g in gaps)) / max(1, height * width)
    return {
        "data": {"image": image["uri"], "samflow_item_id": image["item_id"], "frame_index": image["frame_index"],
                 "doubtful": doubtful, "uncovered_regions": len(gaps), "uncovered_fraction": round(uncovered, 4)},
        "predictions": [{"model_version": MODEL_VERSION, "score": None, "result": regions}],
    }


def _todo(item_id: str, index: int, mask: np.ndarray) -> dict[str, Any]:
    height, width = mask.shape
    return {
        "id": f"{item_id}-todo{index:02d}", "type": "brushlabels", "from_name": TODO_NAME, "to_name": TO_NAME,
        "original_width": int(width), "original_height": int(height), "image_rotation": 0,
        "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [TODO_LABEL]},
        "meta": {"uncovered_rank": index, "area": int(mask.sum())},
    }


def semi_labeling_config(labels: list[str]) -> str:
    """Brush and polygon labels for masks, and the ``todo`` hints."""
    choices = "".join(f"<Label value={quoteattr(label)}/>" for label in labels)
    return (f'<View><Image name="{TO_NAME}" value="$image"/>'
            f'<BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">{choices}</BrushLabels>'
            f'<PolygonLabels name="{POLYGON_NAME}" toName="{TO_NAME}">{choices}</PolygonLabels>'
            f'<BrushLabels name="{TODO_NAME}" toName="{TO_NAME}"><Label value={quoteattr(TODO_LABEL)}/></BrushLabels>'
            f'</View>')
