"""Row builders and COCO export: a batch's rows land in the right tables, and pycocotools reads
the export back to the very masks that went in."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from samflow.actors.batch import object_column
from samflow.exporters.coco import to_coco
from samflow.schemas import masks as mask_column
from samflow.schemas import rle, tables
from samflow.schemas.ids import item_id
from samflow.schemas.rows import build_tables


def _record(mask: np.ndarray, label: str | None = None) -> dict:
    ys, xs = np.nonzero(mask)
    return {
        "segmentation": rle.encode(mask),
        "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
        "area": int(mask.sum()),
        "predicted_iou": 0.9,
        "stability_score": 0.97,
        "point_coords": [[1.0, 2.0]],
        "crop_box": [0.0, 0.0, float(mask.shape[1]), float(mask.shape[0])],
        "source": "grid",
        "label": label,
    }


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    masks = [[rng.random((12, 20)) < 0.3, rng.random((12, 20)) < 0.6], [], None]
    uris = ["s3://b/a.jpg", "s3://b/b.png", "s3://b/c.txt"]
    annotations = [[_record(m, "cat") for m in masks[0]], [], []]
    return masks, {
        "uri": object_column(uris),
        "item_id": object_column([item_id(u) for u in uris]),
        "frame_index": np.zeros(3, np.int32),
        "timestamp_s": np.full(3, np.nan),
        "width": np.array([20, 20, 0], np.int32),
        "height": np.array([12, 12, 0], np.int32),
        "error_stage": object_column(["", "", "decode"]),
        "error_type": object_column(["", "", "not_an_image"]),
        "error_message": object_column(["", "", "not an image: text"]),
        "masks": mask_column.from_records(annotations),
        "embedding": np.eye(3, 8, dtype=np.float32),
    }


def test_build_tables_splits_healthy_and_failed_rows(batch):
    _, data = batch
    out = build_tables(data, run_id="r1", embed_model="tiny://clip")
    assert out["images"].schema.equals(tables.IMAGES)
    assert out["images"].column("uri").to_pylist() == ["s3://b/a.jpg", "s3://b/b.png"]
    assert out["errors"].to_pylist() == [
        {"uri": "s3://b/c.txt", "stage": "decode", "error_type": "not_an_image",
         "message": "not an image: text", "run_id": "r1"}
    ]
    assert out["annotations"].num_rows == 2
    assert out["embeddings"].schema.equals(tables.embeddings_schema(8))
    assert out["embeddings"].num_rows == 2
    assert out["images"].column("timestamp_s").null_count == 2


def test_coco_export_loads_in_pycocotools_with_the_same_masks(batch, tmp_path):
    masks, data = batch
    out = build_tables(data, run_id="r1", embed_model=None)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(to_coco(out["images"], out["annotations"])))
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 2
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["object", "cat"]
    image = next(i for i in coco.dataset["images"] if i["file_name"] == "s3://b/a.jpg")
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
    got = sorted((coco.annToMask(a).astype(bool) for a in anns), key=lambda m: int(m.sum()))
    want = sorted(masks[0], key=lambda m: int(m.sum()))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
