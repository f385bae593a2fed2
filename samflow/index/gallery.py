"""``samflow preview``: a static HTML page of a run's images, their masks and search results
(the page itself is rendered by :mod:`samflow.index.preview`)."""

from __future__ import annotations

import logging
import os
from typing import Any

from samflow.config import StorageConfig
from samflow.index.commands import IndexUserError, OpenIndex, RunIndex
from samflow.media.reread import Pictures
from samflow.store.runs import input_sections
from samflow.store.storage import StorageSource

log = logging.getLogger(__name__)

PREVIEW_COLUMNS = ["item_id", "segmentation", "bbox", "label", "label_score", "predicted_iou"]


def _masks_by_item(run: RunIndex, item_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The annotations of just these items (a filtered dataset scan, not the whole table)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    files = run.committed_files("annotations")
    by_item: dict[str, list[dict[str, Any]]] = {item: [] for item in item_ids}
    if not files or not item_ids:
        return by_item
    dataset = ds.dataset(files, filesystem=run.fs, format="parquet")
    columns = [c for c in PREVIEW_COLUMNS if c in dataset.schema.names]
    table = dataset.to_table(columns=columns, filter=pc.field("item_id").isin(item_ids))
    for row in table.to_pylist():
        by_item[row["item_id"]].append(row)
    return by_item


PREVIEW_IMAGE_COLUMNS = ["item_id", "uri", "frame_index", "timestamp_s", "run_id"]


def _cards(run: RunIndex, rows: list[dict[str, Any]], captions: list[str]) -> list:
    """A card per images row whose picture reads again (the pipeline's decoder: EXIF rotation,
    colour modes, a video's sampled frame), in the rows' order; the others are logged."""
    from samflow.index.preview import Card

    masks = _masks_by_item(run, [row["item_id"] for row in rows])
    pictures = Pictures(StorageSource(run.storage), input_sections(run.dst, run.storage))
    read = dict(pictures.rows(rows))
    cards = []
    for position, (row, caption) in enumerate(zip(rows, captions)):
        pixels = read[position]
        if isinstance(pixels, Exception):
            log.warning("preview: skipping %s: %s", row["uri"], pixels)
            continue
        cards.append(Card(_title(row), pixels, masks[row["item_id"]], caption))
    return cards


def _title(row: dict[str, Any]) -> str:
    name = row["uri"].rsplit("/", 1)[-1]
    return name if row.get("timestamp_s") is None else f"{name} frame {row['frame_index']}"


def write_preview(dst: str, out: str, queries: list[str] | None = None, limit: int = 500, k: int = 12,
                  storage: StorageConfig | None = None) -> dict[str, Any]:
    """A static HTML report of DST: the first ``limit`` images (by URI) with their masks, and
    the top-``k`` images for each text query (needs the image index)."""
    from samflow.index.preview import render
    from samflow.store.storage import write_bytes

    run = RunIndex(dst, storage)
    images = run.catalog.read_table("images", columns=PREVIEW_IMAGE_COLUMNS)
    if images is None:
        raise IndexUserError(f"no committed images under {dst}")
    rows = sorted(images.to_pylist(), key=lambda r: (r["uri"], r["frame_index"], r["item_id"]))
    shown = rows[:limit]
    gallery = _cards(run, shown, [""] * len(shown))
    searches = {}
    if queries:
        index = OpenIndex(dst, "image", run.storage)
        by_item = {row["item_id"]: row for row in rows}
        for query in queries:
            hits = [h for h in index.query(index.text_vector(query), k) if h["item_id"] in by_item]
            searches[query] = _cards(run, [by_item[h["item_id"]] for h in hits],
                                     [f"score {h['score']:.3f}" for h in hits])
    summary = {"images": images.num_rows, "shown": len(gallery), "model": run.model()}
    write_bytes(out, render(f"samflow preview: {dst}", gallery, searches, summary).encode(), run.storage)
    if "://" not in out or out.startswith("file://"):
        os.chmod(out.removeprefix("file://"), 0o644)  # a report to open and share, not a private temp file
    return {"out": out, **summary, "searches": {q: len(c) for q, c in searches.items()}}
