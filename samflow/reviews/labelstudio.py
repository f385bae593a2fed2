"""A Label Studio JSON export of the tasks ``samflow export review`` wrote, as review rows.

Each task names its item (``data.samflow_item_id``; else its image URI) and carries the masks
the run offered (``predictions``, region id = the annotation id). Each submitted annotation of a
task (cancelled ones are skipped) says what a person did with them:

- an offered region kept with the same mask and label: ``accepted``;
- kept with another mask (brush edits) or label: ``corrected``;
- missing from the annotation (deleted): ``rejected``;
- a region of its own (brush, polygon or rectangle): ``added``.

Regions that cannot be used (an item the run does not have, another image size, a mask that
does not decode) become error rows; the task's other regions still count.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samflow.eval.matching import RunImage
from samflow.exporters.semi import TODO_NAME
from samflow.reviews.shapes import KINDS, RegionError, region_rle
from samflow.schemas import rle
from samflow.schemas.rle import Rle

FORMAT = "label-studio"
UNLABELLED = "object"  # samflow.exporters.review's label of a mask without one


@dataclass
class Parsed:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)  # uri, error_type, message


class ReviewFileError(ValueError):
    """The file is not in the format asked for."""


FindImage = Callable[[dict[str, Any]], "RunImage | None"]


def parse_label_studio(tasks: Any, find_image: FindImage, run_masks: dict[str, tuple[Rle, str | None]], source: str,
                       digest: str) -> Parsed:
    """Review rows of an export (a list of tasks, or one task). ``find_image`` maps a task's data
    to the run's image; ``run_masks`` are the run's (mask, label) by annotation id."""
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t for t in tasks):
        raise ReviewFileError("not a Label Studio JSON export (a list of tasks with 'data')")
    parsed = Parsed()
    for number, task in enumerate(tasks):
        where = f"{source}#task {task.get('id', number)}"
        image = find_image(task["data"] if isinstance(task["data"], dict) else {})
        if image is None:
            parsed.errors.append(_error(where, "unknown_item", f"the run has no image {_task_image(task)!r}"))
            continue
        offered = _offered(task, run_masks)
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            _annotation_rows(annotation, image, offered, run_masks, f"{where}/annotation {annotation.get('id')}",
                             digest, parsed)
    return parsed


def _task_image(task: dict[str, Any]) -> str:
    data = task["data"] if isinstance(task["data"], dict) else {}
    return str(data.get("samflow_item_id") or data.get("image") or "")


def _offered(task: dict[str, Any], run_masks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The regions the run offered, by region id: the task's predictions (and the prediction each
    annotation started from) that name one of the run's annotations."""
    predictions = [*(task.get("predictions") or []),
                   *(a.get("prediction") for a in task.get("annotations") or [] if isinstance(a, dict))]
    offered = {}
    for prediction in predictions:
        for region in (prediction.get("result") or []) if isinstance(prediction, dict) else []:
            if isinstance(region, dict) and _annotation_id(region) in run_masks:
                offered[str(region.get("id"))] = region
    return offered


def _annotation_id(region: dict[str, Any]) -> str | None:
    meta = region.get("meta") if isinstance(region.get("meta"), dict) else {}
    return meta.get("samflow_annotation_id") or (str(region["id"]) if region.get("id") is not None else None)


def _annotation_rows(annotation: dict[str, Any], image: RunImage, offered: dict[str, dict[str, Any]],
                     run_masks: dict[str, tuple[Rle, str | None]], where: str, digest: str, parsed: Parsed) -> None:
    who, when = _reviewer(annotation), _time(annotation)
    kept = set()
    for region in annotation.get("result") or []:
        if not isinstance(region, dict) or region.get("type") not in KINDS or region.get("from_name") == TODO_NAME:
            continue  # choices, text areas, the semi stage's uncovered-area hints: no masks
        region_id = str(region.get("id"))
        size = (region.get("original_height"), region.get("original_width"))
        if None not in size and (int(size[0]), int(size[1])) != (image.height, image.width):
            parsed.errors.append(_error(f"{where}/region {region_id}", "size_mismatch",
                                        f"region drawn on a {size[1]}x{size[0]} image, the run's is "
                                        f"{image.width}x{image.height}"))
            continue
        try:
            mask = region_rle(region, image.height, image.width)
        except (RegionError, TypeError, ValueError) as exc:
            parsed.errors.append(_error(f"{where}/region {region_id}", "bad_region", str(exc)))
            continue
        label = _plain(_label(region))
        # an export without its predictions still names the run's masks by region id
        annotation_id = _annotation_id(offered[region_id]) if region_id in offered else \
            (region_id if region_id in run_masks else None)
        if annotation_id is not None:
            kept.add(region_id)
            run_mask, run_label = run_masks[annotation_id]
            action = "accepted" if _same_mask(mask, run_mask) and label == _plain(run_label) else "corrected"
        else:
            action = "added"
        parsed.rows.append(_row(digest, where, region_id, image, annotation_id, mask, label, action, who, when))
    for region_id, region in offered.items():
        if region_id not in kept:
            parsed.rows.append(_row(digest, where, region_id, image, _annotation_id(region), None,
                                    _plain(_label(region)), "rejected", who, when))


def _same_mask(a: Rle, b: Rle) -> bool:
    return list(a["size"]) == list(b["size"]) and np.array_equal(rle.decode(a), rle.decode(b))


def _label(region: dict[str, Any]) -> str | None:
    labels = (region.get("value") or {}).get(region.get("type")) or []
    return str(labels[0]) if labels else None


def _plain(label: str | None) -> str | None:
    """No label and the export's stand-in for none are the same."""
    return None if label in (None, UNLABELLED) else label


def _reviewer(annotation: dict[str, Any]) -> str | None:
    if annotation.get("completed_by") is None:
        return None
    from label_studio_sdk.converter.utils import get_annotator

    return get_annotator(annotation)


def _time(annotation: dict[str, Any]) -> dt.datetime | None:
    for key in ("updated_at", "created_at"):
        if isinstance(annotation.get(key), str):
            try:
                stamp = dt.datetime.fromisoformat(annotation[key])
            except ValueError:
                continue
            return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
    return None


def _row(digest: str, where: str, region_id: str, image: RunImage, annotation_id: str | None, mask: Rle | None,
         label: str | None, action: str, who: str | None, when: dt.datetime | None) -> dict[str, Any]:
    key = hashlib.sha256(f"{digest}\n{where}\n{region_id}".encode()).hexdigest()[:32]
    return {"review_id": key, "item_id": image.item_id, "annotation_id": annotation_id, "segmentation": mask,
            "label": label, "action": action, "reviewer": who, "reviewed_at": when}


def _error(uri: str, error_type: str, message: str) -> dict[str, str]:
    return {"uri": uri, "error_type": error_type, "message": message}
