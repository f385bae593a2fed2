"""A run's ground truth, one row per mask: its SA-1B sidecar masks (``source == "ground_truth"``)
and the masks people settled on in reviews (samflow.reviews.table). What ``samflow eval --gt
run`` scores against and what training learns from.

    truth = truth_table(dst, storage)   # item_id, uri, height, width, segmentation, label, origin
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from samflow.config import StorageConfig
from samflow.reviews.table import REVIEWS, reviewed_masks
from samflow.schemas.tables import RLE_TYPE
from samflow.store.catalog import Catalog

GROUND_TRUTH_SOURCE = "ground_truth"  # samflow.pipeline.ground_truth.SOURCE
ORIGINS = ("ground_truth", "review")

TRUTH = pa.schema([
    ("item_id", pa.string()),
    ("uri", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("segmentation", RLE_TYPE),
    ("label", pa.string()),
    ("origin", pa.string()),  # ground_truth (a sidecar) | review
])


def truth_table(dst: str, storage: StorageConfig | None = None, catalog: Catalog | None = None) -> pa.Table:
    """Every ground-truth mask of DST's committed images (an empty table when there is none)."""
    catalog = catalog or Catalog(dst, storage or StorageConfig())
    images = catalog.read_table("images", columns=["item_id", "uri", "height", "width"])
    if images is None:
        return TRUTH.empty_table()
    annotations = catalog.read_table("annotations", columns=["item_id", "segmentation", "label", "source"])
    rows = []
    if annotations is not None:
        sidecars = annotations.filter(pc.fill_null(pc.equal(annotations["source"], GROUND_TRUTH_SOURCE), False))
        rows += [{**row, "origin": "ground_truth"} for row in sidecars.drop_columns(["source"]).to_pylist()]
    for item, pairs in reviewed_masks(catalog.read_table(REVIEWS)).items():
        rows += [{"item_id": item, "segmentation": mask, "label": label, "origin": "review"} for mask, label in pairs]
    known = {row["item_id"]: row for row in images.to_pylist()}
    return pa.Table.from_pylist([{**known[row["item_id"]], **row} for row in rows if row["item_id"] in known],
                                schema=TRUTH)
