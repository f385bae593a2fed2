"""A COCO instances JSON from any tool (CVAT, another annotator, a ground-truth set) as review rows.

Images are matched to the run's as ``samflow eval`` matches them (samflow.eval.matching). An
annotation carrying ``samflow_annotation_id`` (from ``samflow export coco``) reviews that mask:
``accepted`` when the mask and label are the run's, else ``corrected``; every other annotation
is ``added``. A COCO file cannot say that a mask was deleted, so nothing here is ``rejected``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from samflow.eval.groundtruth import segmentation_rle
from samflow.eval.matching import ImageMatcher
from samflow.reviews.labelstudio import Parsed, ReviewFileError
from samflow.schemas import rle
from samflow.schemas.rle import Rle

FORMAT = "coco"
UNLABELLED = "object"


def parse_coco(data: Any, matcher: ImageMatcher, run_masks: dict[str, tuple[Rle, str | None]], source: str,
               digest: str) -> Parsed:
    """``run_masks``: the run's (mask, label) by annotation id."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ReviewFileError("not a COCO instances JSON (it needs 'images' and 'annotations' lists)")
    names = {c.get("id"): c.get("name") for c in data.get("categories") or [] if isinstance(c, dict)}
    parsed = Parsed()
    images = {}
    for gt_image in (i for i in data["images"] if isinstance(i, dict)):
        name = str(gt_image.get("file_name") or gt_image.get("id"))
        image = matcher.match(gt_image)
        if image is None:
            parsed.errors.append({"uri": f"{source}#{name}", "error_type": "unknown_item",
                                  "message": f"the run has no image {name!r}"})
        elif (gt_image.get("height"), gt_image.get("width")) not in ((None, None), (image.height, image.width)):
            parsed.errors.append({"uri": f"{source}#{name}", "error_type": "size_mismatch",
                                  "message": f"{gt_image.get('width')}x{gt_image.get('height')} in the file, "
                                             f"{image.width}x{image.height} in the run"})
        else:
            images[gt_image.get("id")] = image
    for annotation in (a for a in data["annotations"] if isinstance(a, dict)):
        image = images.get(annotation.get("image_id"))
        if image is None:
            continue  # its image is already an error row
        where = f"{source}#annotation {annotation.get('id')}"
        try:
            mask = segmentation_rle(annotation.get("segmentation"), image.height, image.width)
        except (ValueError, TypeError, KeyError) as exc:
            parsed.errors.append({"uri": where, "error_type": "bad_region", "message": str(exc)})
            continue
        label = names.get(annotation.get("category_id"))
        label = None if label in (None, UNLABELLED) else str(label)
        reviewed = annotation.get("samflow_annotation_id")
        if reviewed in run_masks:
            run_mask, run_label = run_masks[reviewed]
            same = np.array_equal(rle.decode(mask), rle.decode(run_mask)) and label == run_label
            action = "accepted" if same else "corrected"
        else:
            reviewed, action = None, "added"
        parsed.rows.append({
            "review_id": hashlib.sha256(f"{digest}\n{where}".encode()).hexdigest()[:32], "item_id": image.item_id,
            "annotation_id": reviewed, "segmentation": mask, "label": label, "action": action,
            "reviewer": None, "reviewed_at": None,
        })
    return parsed
