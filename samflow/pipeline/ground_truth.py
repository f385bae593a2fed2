"""SA-1B's shipped masks as ground-truth annotation rows (``input.sa1b_ground_truth``).

An SA-1B tar pairs each ``sa_N.jpg`` with ``sa_N.json``: ``{"image": {...}, "annotations": [{
"segmentation": {"size": [h, w], "counts": str}, "bbox": [x, y, w, h], "area", "predicted_iou",
"stability_score", "point_coords", "crop_box", "id"}, ...]}``. The sidecar reaches the writer as
the row's ``meta_json`` (samflow/inputs/webdataset.py); here each annotation becomes one mask of the
row with ``source = "ground_truth"`` and ``source_id`` = its ``id``, after the model's masks.

Every annotation is checked before it becomes a row: the RLE's size must be the image's, its
runs must cover exactly h * w pixels (pycocotools trusts this and would write past its buffer
when decoding), and pycocotools' area and box of the mask must match the ones the file states.
An item with a malformed annotation becomes one error row (stage ``ground_truth``): its other
rows would be a partial, silently wrong ground truth.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from samflow.actors.batch import Batch, healthy, mark_error
from samflow.schemas import masks as mask_column
from samflow.schemas.rle import string_to_counts

SOURCE = "ground_truth"
STAGE = "ground_truth"
_BOX_TOLERANCE = 1.0  # pixels: a stated box may round differently from pycocotools' toBbox
_COUNT_CHARS = range(48, 48 + 64)  # maskApi.c's 6-bit alphabet


class GroundTruthError(ValueError):
    error_type = "bad_ground_truth"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def add_ground_truth(batch: Batch) -> None:
    """Append each healthy row's SA-1B annotations (from its ``meta_json``) to its masks, in
    place; a row whose annotations are malformed becomes an error row."""
    sidecars = batch.get("meta_json")
    if sidecars is None:
        return
    per_row: list[list[dict[str, Any]]] = [[] for _ in range(len(batch["uri"]))]
    for row in healthy(batch):
        text = str(sidecars[row] or "")
        if not text:
            continue
        try:
            per_row[row] = sa1b_records(json.loads(text), int(batch["height"][row]), int(batch["width"][row]))
        except (GroundTruthError, ValueError, TypeError) as exc:
            mark_error(batch, row, STAGE, exc if isinstance(exc, GroundTruthError) else GroundTruthError(str(exc)))
    if any(per_row):
        mask_column.add(batch, per_row)


def sa1b_records(sidecar: Any, height: int, width: int) -> list[dict[str, Any]]:
    """The mask records of an SA-1B sidecar's ``annotations`` (none when it has that key not)."""
    if not isinstance(sidecar, dict) or "annotations" not in sidecar:
        return []
    annotations = sidecar["annotations"]
    if not isinstance(annotations, list):
        raise GroundTruthError(f"'annotations' is a {type(annotations).__name__}, not a list")
    records = []
    for index, annotation in enumerate(annotations):
        try:
            records.append(_record(annotation, height, width))
        except (GroundTruthError, LookupError, TypeError, ValueError) as exc:
            name = annotation.get("id", "?") if isinstance(annotation, dict) else "?"
            reason = exc.message if isinstance(exc, GroundTruthError) else f"{type(exc).__name__}: {exc}"
            raise GroundTruthError(f"annotation {index} (id {name}) is malformed: {reason}") from exc
    return records


def _record(annotation: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    rle = _checked_rle(annotation["segmentation"], height, width)
    area = int(coco_mask.area(rle))
    box = [float(v) for v in coco_mask.toBbox(rle)]
    if "area" in annotation and int(annotation["area"]) != area:
        raise GroundTruthError(f"its area {annotation['area']} is not its mask's {area}")
    if "bbox" in annotation:
        stated = _numbers(annotation["bbox"], 4, "bbox")
        if max(abs(a - b) for a, b in zip(stated, box, strict=True)) > _BOX_TOLERANCE:
            raise GroundTruthError(f"its bbox {stated} is not its mask's {box}")
    return {
        "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
        "bbox": box,
        "area": area,
        "predicted_iou": _optional_number(annotation, "predicted_iou"),
        "stability_score": _optional_number(annotation, "stability_score"),
        "point_coords": [_numbers(p, 2, "point_coords") for p in annotation.get("point_coords") or []],
        "crop_box": _numbers(annotation["crop_box"], 4, "crop_box") if annotation.get("crop_box") else None,
        "source": SOURCE,
        "source_id": None if annotation.get("id") is None else str(annotation["id"]),
        # a class name where the sidecar gives one (samflow synth's tars do; SA-1B's have none)
        "label": annotation["label"] if isinstance(annotation.get("label"), str) else None,
    }


def _checked_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """The annotation's RLE in pycocotools' compressed form, once it is known to be whole."""
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        raise GroundTruthError("segmentation is not an RLE {size, counts}")
    size = [int(v) for v in segmentation["size"]]
    if size != [height, width]:
        raise GroundTruthError(f"segmentation size {size} is not the image's [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed RLE: runs as numbers
        runs = np.asarray(counts, dtype=np.int64)
        _check_runs(runs, height * width)
        return coco_mask.frPyObjects({"size": size, "counts": [int(c) for c in runs]}, height, width)
    if not isinstance(counts, str) or any(ord(c) not in _COUNT_CHARS for c in counts):
        raise GroundTruthError("segmentation counts is not a COCO RLE string")
    try:
        runs = string_to_counts(counts)
    except IndexError:  # the last character says another follows
        raise GroundTruthError("segmentation counts string ends in the middle of a run") from None
    _check_runs(runs, height * width)
    return {"size": size, "counts": counts.encode("ascii")}


def _check_runs(runs: np.ndarray, pixels: int) -> None:
    if runs.size and (runs.min() < 0 or int(runs.sum()) != pixels):
        raise GroundTruthError(f"segmentation runs cover {int(runs.sum())} pixels, the image has {pixels}")
    if not runs.size and pixels:
        raise GroundTruthError("segmentation counts is empty")


def _numbers(values: Any, length: int, name: str) -> list[float]:
    numbers = [float(v) for v in values]
    if len(numbers) != length or not all(math.isfinite(v) for v in numbers):
        raise GroundTruthError(f"{name} {values!r} is not {length} finite numbers")
    return numbers


def _optional_number(annotation: dict[str, Any], name: str) -> float | None:
    value = annotation.get(name)
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise GroundTruthError(f"{name} {value!r} is not a finite number")
    return number
