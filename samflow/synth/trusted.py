"""Which masks of an annotated DST are trusted enough to generate from, image by image.

Three sources, in the priority order ``synth.sources`` gives; an image's masks all come from
the first source that has any for it (ground truth and the engine's masks of one image overlap,
mixing them would paint the same object twice):

- ``ground_truth``: annotation rows with ``source = "ground_truth"`` (SA-1B sidecars);
- ``reviews``: the ``reviews/`` table's masks whose latest review's action is in
  ``synth.review_actions`` (accepted and corrected by default);
- ``engine``: the model's own masks with ``predicted_iou`` and ``stability_score`` at least
  the configured thresholds, and not rejected or corrected by a review.

Masks under ``synth.min_area`` pixels are left out; of the rest at most ``synth.max_masks`` per
image, the largest, in their table order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from samflow.config import RunConfig
from samflow.schemas.rle import area
from samflow.store.catalog import Catalog

GROUND_TRUTH = "ground_truth"
_ANNOTATION_COLUMNS = ["annotation_id", "item_id", "segmentation", "area", "label", "source",
                       "predicted_iou", "stability_score"]


@dataclass
class SourceImage:
    item_id: str
    uri: str
    height: int
    width: int
    masks: list[dict[str, Any]] = field(default_factory=list)  # segmentation, label, source, source_id
    tier: str = ""


def trusted_images(dst: str, cfg: RunConfig) -> Iterator[SourceImage]:
    """Every image of ``dst`` that has trusted masks, with them (see the module docstring)."""
    catalog = Catalog(dst, cfg.storage)
    images = catalog.read_table("images", columns=["item_id", "uri", "height", "width"])
    if images is None:
        return
    annotations = catalog.read_table("annotations", columns=_ANNOTATION_COLUMNS)
    reviewed, overruled = _reviews(catalog, cfg) if "reviews" in cfg.synth.sources else ({}, set())
    tiers = _tiers(annotations, cfg, overruled)
    tiers["reviews"] = reviewed
    for row in images.to_pylist():
        for tier in cfg.synth.sources:
            masks = [m for m in tiers.get(tier, {}).get(row["item_id"], []) if int(m["area"]) >= cfg.synth.min_area]
            if masks:
                yield SourceImage(row["item_id"], row["uri"], int(row["height"]), int(row["width"]),
                                  _largest(masks, cfg.synth.max_masks), tier)
                break


def _largest(masks: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    keep = set(sorted(range(len(masks)), key=lambda i: -int(masks[i]["area"]))[:limit])
    return [{k: v for k, v in mask.items() if k != "area"} for i, mask in enumerate(masks) if i in keep]


def _tiers(annotations: pa.Table | None, cfg: RunConfig, overruled: set[str]) -> dict[str, dict[str, list]]:
    if annotations is None or annotations.num_rows == 0:
        return {}
    source = annotations.column("source")
    truth = pc.fill_null(pc.equal(source, GROUND_TRUTH), False)
    confident = pc.and_(
        pc.fill_null(pc.greater_equal(annotations.column("predicted_iou"), cfg.synth.min_predicted_iou), False),
        pc.fill_null(pc.greater_equal(annotations.column("stability_score"), cfg.synth.min_stability_score), False),
    )
    if overruled:
        confident = pc.and_(confident, pc.invert(pc.is_in(annotations.column("annotation_id"),
                                                          pa.array(sorted(overruled)))))
    return {
        GROUND_TRUTH: _by_item(annotations.filter(truth)),
        "engine": _by_item(annotations.filter(pc.and_(pc.invert(truth), confident))),
    }


def _by_item(rows: pa.Table) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows.select(["annotation_id", "item_id", "segmentation", "area", "label", "source"]).to_pylist():
        out[row.pop("item_id")].append(_mask(row["segmentation"], row["area"], row["label"], row["source"],
                                             row["annotation_id"]))
    return out


def _mask(segmentation: dict, area: int, label: str | None, source: str | None, source_id: str | None) -> dict:
    return {"segmentation": segmentation, "area": area, "label": label, "source": source, "source_id": source_id}


def _reviews(catalog: Catalog, cfg: RunConfig) -> tuple[dict[str, list[dict[str, Any]]], set[str]]:
    """Reviewed masks by item (the latest review of an annotation counts), and the annotation
    ids a review rejected or replaced (no longer trusted as engine masks)."""
    table = catalog.read_table("reviews")
    if table is None or table.num_rows == 0:
        return {}, set()
    order = [c for c in ("reviewed_at", "import_id") if c in table.column_names]
    rows = table.to_pylist()
    rows.sort(key=lambda r: tuple((r.get(c) is not None, r.get(c)) for c in order))
    latest: dict[tuple[str, str], dict] = {}
    for index, row in enumerate(rows):
        latest[(row["item_id"], row.get("annotation_id") or f"added-{index}")] = row
    masks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    overruled = {row["annotation_id"] for row in latest.values()
                 if row.get("annotation_id") and row["action"] in ("rejected", "corrected")}
    for row in latest.values():
        segmentation = row.get("segmentation")
        if row["action"] in cfg.synth.review_actions and segmentation is not None:
            masks[row["item_id"]].append(_mask(segmentation, area(segmentation), row.get("label"),
                                               f"review_{row['action']}", row.get("annotation_id")))
    return masks, overruled
