"""Reading the ``reviews/`` table: the masks people settled on, per item.

Several imports may review one annotation; the latest review of it counts (by its time where the
file says, then by import). An accepted or corrected annotation contributes the reviewed mask, a
rejected one nothing; added masks all count, each distinct mask once.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import pyarrow as pa

from samflow.config import StorageConfig
from samflow.schemas.rle import Rle
from samflow.store.catalog import Catalog

REVIEWS = "reviews"
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


def read_reviews(dst: str, storage: StorageConfig) -> pa.Table | None:
    """Every committed review row under DST, or None."""
    return Catalog(dst, storage).read_table(REVIEWS)


def reviewed_masks(reviews: pa.Table | None) -> dict[str, list[tuple[Rle, str | None]]]:
    """(mask, label) pairs of the reviewed masks by item id (see the module docstring)."""
    if reviews is None or reviews.num_rows == 0:
        return {}
    rows = reviews.select(["item_id", "annotation_id", "segmentation", "label", "action",
                           "reviewed_at", "import_id"]).to_pylist()
    rows.sort(key=lambda r: (r["reviewed_at"] or _EARLIEST, r["import_id"] or ""))
    latest: dict[tuple[str, str], dict] = {}
    added: dict[tuple[str, str], dict] = {}
    for row in rows:
        if row["annotation_id"]:
            latest[(row["item_id"], row["annotation_id"])] = row
        elif row["segmentation"] is not None:
            added[(row["item_id"], row["segmentation"]["counts"])] = row
    masks: dict[str, list[tuple[Rle, str | None]]] = defaultdict(list)
    for row in [*latest.values(), *added.values()]:
        if row["action"] != "rejected" and row["segmentation"] is not None:
            masks[row["item_id"]].append((row["segmentation"], row["label"]))
    return dict(masks)
