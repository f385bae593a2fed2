"""``samflow review import DST FILE``: a review file becomes rows of ``reviews/`` (and
``review_errors/``), committed like the annotate tables.

The import's id is ``review-<sha256 of the file>``: its rows are staged as one shard of that name
and committed with a marker (samflow.store.catalog). Importing a file whose marker exists writes
nothing; another file is another shard, so nothing imported before is touched.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from samflow.config import StorageConfig
from samflow.errors import UserError
from samflow.eval.matching import ImageMatcher, RunImage
from samflow.reviews import coco, labelstudio
from samflow.reviews.labelstudio import Parsed, ReviewFileError
from samflow.schemas import tables
from samflow.store.catalog import Catalog, ShardResult
from samflow.store.storage import read_bytes

FORMATS = (labelstudio.FORMAT, coco.FORMAT)
STAGE = "review_import"


def import_reviews(dst: str, file: str, fmt: str | None = None, storage: StorageConfig | None = None) -> dict[str, Any]:
    """Import ``file`` into DST's reviews; returns a summary (``written`` false when it was
    imported before)."""
    storage = storage or StorageConfig()
    catalog = Catalog(dst, storage)
    data = _read(file, storage)
    digest = hashlib.sha256(data).hexdigest()
    import_id = f"review-{digest[:24]}"
    summary: dict[str, Any] = {"import_id": import_id, "file": file, "sha256": digest}
    if catalog.is_committed(import_id):
        return {**summary, "written": False, "note": "this file was imported before: nothing written"}
    try:
        content = json.loads(data)
    except ValueError as exc:
        raise UserError(f"{file} is not JSON: {exc}") from None
    fmt = fmt or guess_format(content)
    parsed = _parse(fmt, content, catalog, dst, file, digest)
    reviews = _reviews_table(parsed, file, digest, fmt, import_id)
    errors = _errors_table(parsed, import_id)
    _commit(catalog, import_id, {"reviews": reviews, tables.REVIEW_ERRORS_TABLE: errors})
    actions = Counter(row["action"] for row in parsed.rows)
    return {**summary, "format": fmt, "written": True, "rows": len(parsed.rows),
            **{action: actions.get(action, 0) for action in tables.REVIEW_ACTIONS}, "errors": len(parsed.errors),
            "error_examples": [f"{e['uri']}: {e['message']}" for e in parsed.errors[:3]]}


def guess_format(content: Any) -> str:
    """COCO has ``images`` and ``annotations``; a Label Studio export is a list of tasks."""
    return coco.FORMAT if isinstance(content, dict) and "images" in content else labelstudio.FORMAT


def _read(file: str, storage: StorageConfig) -> bytes:
    try:
        return read_bytes(file, storage)
    except FileNotFoundError:
        raise UserError(f"review file not found: {file}") from None
    except IsADirectoryError:
        raise UserError(f"{file} is a folder: give the exported JSON file") from None


def _parse(fmt: str, content: Any, catalog: Catalog, dst: str, file: str, digest: str) -> Parsed:
    images_table = catalog.read_table("images", columns=["item_id", "uri", "height", "width"])
    if images_table is None:
        raise UserError(f"no committed images under {dst}: nothing to review")
    images = [RunImage(r["item_id"], r["uri"], int(r["height"]), int(r["width"])) for r in images_table.to_pylist()]
    matcher = ImageMatcher(images, [m["src"] for m in catalog.run_manifests() if m.get("src")])
    run_masks = _run_masks(catalog, _named_ids(content))
    try:
        if fmt == coco.FORMAT:
            return coco.parse_coco(content, matcher, run_masks, file, digest)
        return labelstudio.parse_label_studio(content, lambda data: _task_image(data, matcher), run_masks, file, digest)
    except ReviewFileError as exc:
        raise UserError(f"{file}: {exc} (--format {fmt})") from None


def _task_image(data: dict[str, Any], matcher: ImageMatcher) -> RunImage | None:
    """A task's image: by the item id samflow's export put in it, else by its image URI."""
    return matcher.match({"samflow_item_id": data.get("samflow_item_id"), "file_name": data.get("image")})


def _named_ids(content: Any) -> list[str]:
    """Every string the file could name one of the run's annotations by (region ids and their
    ``samflow_annotation_id``), so that only those masks are read from the run."""
    found: set[str] = set()
    stack = [content]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            found.update(str(value[k]) for k in ("id", "samflow_annotation_id") if isinstance(value.get(k), str))
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(v for v in value if isinstance(v, (dict, list)))
    return sorted(found)


def _run_masks(catalog: Catalog, ids: list[str]) -> dict[str, tuple[dict, str | None]]:
    """The run's (mask, label) of the annotations among ``ids``."""
    annotations = catalog.read_table("annotations", columns=["annotation_id", "segmentation", "label"])
    if annotations is None or not ids:
        return {}
    named = annotations.filter(pc.is_in(annotations["annotation_id"], value_set=pa.array(ids, pa.string())))
    return {r["annotation_id"]: (r["segmentation"], r["label"]) for r in named.to_pylist()}


def _reviews_table(parsed: Parsed, file: str, digest: str, fmt: str, import_id: str) -> pa.Table:
    extra = {"source_uri": file, "source_sha256": digest, "source_format": fmt, "import_id": import_id}
    return pa.Table.from_pylist([{**row, **extra} for row in parsed.rows], schema=tables.REVIEWS)


def _errors_table(parsed: Parsed, import_id: str) -> pa.Table:
    rows = [{**error, "stage": STAGE, "run_id": import_id} for error in parsed.errors]
    return pa.Table.from_pylist(rows, schema=tables.ERRORS)


def _commit(catalog: Catalog, import_id: str, data: dict[str, pa.Table]) -> None:
    rows = {}
    for table, rows_of in data.items():
        if rows_of.num_rows:
            sink = io.BytesIO()
            pq.write_table(rows_of, sink)
            catalog.put_staged(import_id, table, import_id, sink.getvalue())
            rows[table] = rows_of.num_rows
    # No source URIs in the marker: they would join annotate's done-set, which holds inputs.
    catalog.commit(import_id, ShardResult(import_id, [], rows))
    catalog.finish_run(import_id)
