"""Ground truth for an evaluation, per run image: from a COCO instances file, or the run's own
ground-truth rows (SA-1B sidecars: ``source == "ground_truth"``) and reviewed masks.

What cannot be used is counted and named, never a crash: images the run does not have, images
of another size, annotations whose mask does not decode.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pycocotools import mask as coco_mask

from samflow.eval.matching import ImageMatcher, RunImage
from samflow.schemas.rle import Rle

UNLABELLED = "object"


@dataclass
class GtMask:
    rle: Rle
    label: str
    crowd: bool = False


@dataclass
class GroundTruth:
    """Masks by run item id (every key is an evaluated image, maybe with no mask), and what was
    left out, as ``file_name: reason`` lines."""

    masks: dict[str, list[GtMask]] = field(default_factory=dict)
    unknown_images: list[str] = field(default_factory=list)
    size_mismatch: list[str] = field(default_factory=list)
    bad_annotations: list[str] = field(default_factory=list)
    skipped_annotations: int = 0

    @property
    def labelled(self) -> bool:
        """Whether the ground truth names categories (then AP is also figured per category)."""
        return any(m.label != UNLABELLED for masks in self.masks.values() for m in masks)


class GroundTruthFileError(ValueError):
    """The file is not a COCO instances JSON."""


def from_coco(data: Any, matcher: ImageMatcher) -> GroundTruth:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise GroundTruthFileError("not a COCO instances JSON (it needs 'images' and 'annotations' lists)")
    names = {c.get("id"): str(c.get("name") or UNLABELLED) for c in data.get("categories") or [] if isinstance(c, dict)}
    truth = GroundTruth()
    usable: dict[Any, RunImage] = {}
    for gt_image in data["images"]:
        if not isinstance(gt_image, dict):
            continue
        name = str(gt_image.get("file_name") or gt_image.get("id"))
        image = matcher.match(gt_image)
        if image is None:
            truth.unknown_images.append(name)
        elif _declared_size(gt_image) not in (None, (image.height, image.width)):
            h, w = _declared_size(gt_image)  # type: ignore[misc]
            truth.size_mismatch.append(f"{name}: {w}x{h} in the ground truth, {image.width}x{image.height} in the run")
        else:
            usable[gt_image.get("id")] = image
            truth.masks.setdefault(image.item_id, [])
    for annotation in data["annotations"]:
        image = usable.get(annotation.get("image_id")) if isinstance(annotation, dict) else None
        if image is None:
            truth.skipped_annotations += 1
            continue
        try:
            rle = segmentation_rle(annotation.get("segmentation"), image.height, image.width)
        except (ValueError, TypeError, KeyError) as exc:
            truth.bad_annotations.append(f"annotation {annotation.get('id')} of {image.uri}: {exc}")
            continue
        truth.masks[image.item_id].append(
            GtMask(rle, names.get(annotation.get("category_id"), UNLABELLED), bool(annotation.get("iscrowd"))))
    return truth


def _declared_size(gt_image: dict[str, Any]) -> tuple[int, int] | None:
    if gt_image.get("height") is None or gt_image.get("width") is None:
        return None
    return int(gt_image["height"]), int(gt_image["width"])


def segmentation_rle(segmentation: Any, height: int, width: int) -> Rle:
    """A COCO segmentation (polygons, list or string RLE) as a string RLE of the run image's size."""
    if isinstance(segmentation, list):
        polygons = [[float(v) for v in polygon] for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            raise ValueError("no polygon with three points")
        encoded = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"mask size {size} is not the image's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != height * width:
                raise ValueError("its runs do not cover the image")
            encoded = coco_mask.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, height, width)
        else:
            encoded = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
            coco_mask.area(encoded)  # a malformed string fails here, not in COCOeval
    else:
        raise TypeError("segmentation is neither polygons nor an RLE")
    return {"size": [height, width], "counts": encoded["counts"].decode("ascii")}


def from_truth(truth: pa.Table) -> GroundTruth:
    """A run's own ground truth (samflow.reviews.truth.truth_table): its items are the evaluated ones."""
    masks: dict[str, list[GtMask]] = defaultdict(list)
    for row in truth.select(["item_id", "segmentation", "label"]).to_pylist():
        masks[row["item_id"]].append(GtMask(row["segmentation"], row["label"] or UNLABELLED))
    return GroundTruth(masks=dict(masks))
