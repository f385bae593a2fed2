"""``samflow eval DST --gt GT``: a run's masks against ground truth, recorded under DST/_eval/.

    result = evaluate(dst, gt="coco.json" | RUN_GT, storage=StorageConfig())

``gt`` is a COCO instances JSON (local or s3://), or :data:`RUN_GT` for the run's own
ground-truth rows and reviewed masks. Predictions are DST's other masks, scored by their
predicted IoU (a concept mask by its label score, a detector's by its box score). The result is
the figures of :func:`samflow.eval.metrics.mask_metrics` plus what was left out and why
(``warnings``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from samflow.config import StorageConfig
from samflow.errors import UserError
from samflow.eval import RUN_GT
from samflow.eval.groundtruth import (
    GroundTruth,
    GroundTruthFileError,
    from_coco,
    from_truth,
)
from samflow.eval.matching import ImageMatcher, RunImage
from samflow.eval.metrics import UNLABELLED, mask_metrics
from samflow.reviews.truth import GROUND_TRUTH_SOURCE, truth_table
from samflow.store.catalog import EVALS, Catalog
from samflow.store.runs import record_id
from samflow.store.storage import read_bytes

_EXAMPLES = 3
_SCORES = ("predicted_iou", "label_score", "proposal_score")  # a mask's score: the first it has
_PRED_COLUMNS = ["item_id", "segmentation", *_SCORES, "label", "source"]


def evaluate(dst: str, gt: str | None = RUN_GT, storage: StorageConfig | None = None,
             write: bool = True) -> dict[str, Any]:
    storage = storage or StorageConfig()
    catalog = Catalog(dst, storage)
    images = _run_images(catalog, dst)
    annotations = catalog.read_table("annotations", columns=_PRED_COLUMNS)
    if annotations is None:
        annotations = pa.table({name: pa.array([], pa.string()) for name in ("item_id", "source")})
    manifests = catalog.run_manifests()
    truth, gt_sha256 = _ground_truth(gt or RUN_GT, catalog, images, manifests, storage)
    if not truth.masks:
        raise UserError(_nothing_matched(gt or RUN_GT, truth, dst))
    items = sorted(truth.masks)
    predictions = _predictions(annotations, items)
    gt_masks = [truth.masks[item] for item in items]
    labelled = truth.labelled and any(label != UNLABELLED for p in predictions.values() for _, _, label in p)
    figures = mask_metrics(
        [[m.rle for m in masks] for masks in gt_masks],
        [[rle for rle, _, _ in predictions.get(item, [])] for item in items],
        [[score for _, score, _ in predictions.get(item, [])] for item in items],
        gt_labels=[[m.label for m in masks] for masks in gt_masks] if labelled else None,
        pred_labels=[[label for _, _, label in predictions.get(item, [])] for item in items] if labelled else None,
        gt_crowd=[[m.crowd for m in masks] for masks in gt_masks],
    )
    result = {**figures, **_left_out(truth), "warnings": warnings(truth),
              **_identity(dst, gt or RUN_GT, gt_sha256, manifests)}
    if write:
        catalog.write_json(catalog.path(EVALS, f"{result['eval_id']}.json"), result)
        result["path"] = catalog.path(EVALS, f"{result['eval_id']}.json")
    return result


def _run_images(catalog: Catalog, dst: str) -> list[RunImage]:
    table = catalog.read_table("images", columns=["item_id", "uri", "height", "width"])
    if table is None:
        raise UserError(f"no committed images under {dst}: run `samflow annotate SRC --out {dst}` first")
    return [RunImage(r["item_id"], r["uri"], int(r["height"]), int(r["width"])) for r in table.to_pylist()]


def _ground_truth(gt: str, catalog: Catalog, images: list[RunImage], manifests: list[dict],
                  storage: StorageConfig) -> tuple[GroundTruth, str | None]:
    if gt == RUN_GT:
        return from_truth(truth_table(catalog.dst, catalog=catalog)), None
    try:
        data = read_bytes(gt, storage)
    except FileNotFoundError:
        raise UserError(f"ground truth not found: {gt} (a COCO JSON, or `--gt {RUN_GT}` for the run's own)") from None
    try:
        coco = json.loads(data)
        matcher = ImageMatcher(images, [m["src"] for m in manifests if m.get("src")])
        return from_coco(coco, matcher), hashlib.sha256(data).hexdigest()
    except (ValueError, GroundTruthFileError) as exc:
        raise UserError(f"ground truth {gt}: {exc}") from None


def _predictions(annotations: pa.Table, items: list[str]) -> dict[str, list[tuple[dict, float, str]]]:
    """(mask, score, label) of each item's predicted masks (every source but ground truth)."""
    if annotations.num_rows == 0:
        return {}
    chosen = pc.and_(pc.is_in(annotations["item_id"], value_set=pa.array(items, pa.string())),
                     pc.fill_null(pc.not_equal(annotations["source"], GROUND_TRUTH_SOURCE), True))
    by_item: dict[str, list[tuple[dict, float, str]]] = defaultdict(list)
    for row in annotations.filter(chosen).to_pylist():
        score = next((row[k] for k in _SCORES if row.get(k) is not None), 1.0)
        by_item[row["item_id"]].append((row["segmentation"], float(score), row["label"] or UNLABELLED))
    return by_item


def _left_out(truth: GroundTruth) -> dict[str, int]:
    return {"unknown_images": len(truth.unknown_images), "size_mismatch": len(truth.size_mismatch),
            "bad_annotations": len(truth.bad_annotations), "skipped_annotations": truth.skipped_annotations}


def warnings(truth: GroundTruth) -> list[str]:
    """One line per kind of ground truth left out, with a few examples."""
    lines = []
    for items, what in ((truth.unknown_images, "images that the run does not have"),
                        (truth.size_mismatch, "images of another size than the run's"),
                        (truth.bad_annotations, "annotations whose mask does not decode")):
        if items:
            lines.append(f"ground truth has {len(items)} {what}, left out (e.g. {'; '.join(items[:_EXAMPLES])})")
    return lines


def _nothing_matched(gt: str, truth: GroundTruth, dst: str) -> str:
    if gt == RUN_GT:
        return (f"the run under {dst} has no ground-truth masks (SA-1B sidecars, imported reviews): "
                f"give a COCO file with --gt FILE")
    reasons = "; ".join(warnings(truth)) or "it lists no images"
    return f"none of the ground truth in {gt} can be evaluated against {dst}: {reasons}"


def _identity(dst: str, gt: str, gt_sha256: str | None, manifests: list[dict]) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    runs = [m["run_id"] for m in manifests if m.get("run_id")]
    return {"eval_id": record_id(now), "created_at": now.isoformat(),
            "dst": dst, "gt": gt, "gt_sha256": gt_sha256, "run_id": runs[-1] if runs else None, "runs": runs}
