"""SA-1B sidecar annotations as ground-truth rows: the writer's step, on plain batches (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from samflow.pipeline.ground_truth import add_ground_truth, sa1b_records
from samflow.schemas import masks as mask_column
from samflow.schemas.rows import build_tables
from tests.helpers.stage_batches import image_batch

H, W = 30, 40


def _annotation(ann_id: int, y0: int, x0: int) -> dict:
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[y0 : y0 + 7, x0 : x0 + 9] = 1
    rle = coco_mask.encode(mask)
    return {"id": ann_id, "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
            "bbox": coco_mask.toBbox(rle).tolist(), "area": int(coco_mask.area(rle)),
            "predicted_iou": 0.8, "stability_score": 0.9, "point_coords": [[3.0, 4.0]], "crop_box": [0, 0, W, H]}


def _counts(mask: np.ndarray) -> str:
    return coco_mask.encode(mask)["counts"].decode()


def _batch(sidecars: list[dict | str | None]) -> dict:
    batch = image_batch([np.zeros((H, W, 3), np.uint8) for _ in sidecars])
    batch["frame_index"] = np.zeros(len(sidecars), np.int32)
    batch["timestamp_s"] = np.full(len(sidecars), np.nan)
    batch["meta_json"] = np.array([s if isinstance(s, str) else json.dumps(s) if s else "" for s in sidecars], dtype=object)
    return batch


def test_sa1b_annotations_become_ground_truth_rows_after_the_models_masks():
    shipped = [_annotation(7, 2, 3), _annotation(8, 10, 20)]
    batch = _batch([{"image": {"image_id": 1}, "annotations": shipped}, None])
    mask_column.add(batch, [[{"segmentation": shipped[0]["segmentation"], "source": "grid"}], []])
    add_ground_truth(batch)
    rows = build_tables(batch, "run")["annotations"].to_pylist()
    assert [r["source"] for r in rows] == ["grid", "ground_truth", "ground_truth"]
    truth = rows[1:]
    assert [r["source_id"] for r in truth] == ["7", "8"]
    assert [r["segmentation"] for r in truth] == [a["segmentation"] for a in shipped]
    assert [(r["area"], r["bbox"]) for r in truth] == [(a["area"], a["bbox"]) for a in shipped]
    assert truth[0]["point_coords"] == [[3.0, 4.0]] and truth[0]["predicted_iou"] == pytest.approx(0.8)
    images = build_tables(batch, "run")["images"].to_pylist()
    assert json.loads(images[0]["meta_json"])["image"] == {"image_id": 1} and images[1]["meta_json"] is None


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (lambda a: a["segmentation"].update(size=[H + 1, W]), "not the image's"),
        (lambda a: a["segmentation"].update(counts=_counts(np.ones((H, W + 2), np.uint8, order="F"))), "cover"),
        (lambda a: a["segmentation"].update(counts=a["segmentation"]["counts"] + "o"), "ends"),
        (lambda a: a["segmentation"].update(counts="\x01\x02"), "not a COCO RLE string"),
        (lambda a: a.update(area=a["area"] + 5), "area"),
        (lambda a: a.update(bbox=[0, 0, 1, 1]), "bbox"),
        (lambda a: a.pop("segmentation"), "KeyError"),
        (lambda a: a.update(predicted_iou="high"), "ValueError"),
    ],
)
def test_a_malformed_annotation_makes_its_item_an_error_row_and_spares_the_others(spoil, why):
    bad = [_annotation(1, 0, 0), _annotation(2, 5, 5)]
    spoil(bad[1])
    batch = _batch([{"annotations": bad}, {"annotations": [_annotation(3, 1, 1)]}])
    add_ground_truth(batch)
    tables = build_tables(batch, "run")
    (error,) = tables["errors"].to_pylist()
    assert (error["uri"], error["stage"], error["error_type"]) == ("mem://0.png", "ground_truth", "bad_ground_truth")
    assert "annotation 1 (id 2)" in error["message"] and why in error["message"]
    assert [r["source_id"] for r in tables["annotations"].to_pylist()] == ["3"]


def test_sidecars_without_annotations_or_unparseable_ones():
    assert sa1b_records({"caption": "a cat"}, H, W) == []  # a plain WebDataset sidecar
    batch = _batch([{"annotations": "all of them"}, "[1, 2"])
    add_ground_truth(batch)
    errors = build_tables(batch, "run")["errors"].to_pylist()
    assert [e["error_type"] for e in errors] == ["bad_ground_truth", "bad_ground_truth"]


def test_uncompressed_rle_counts_are_accepted():
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[4:9, 6:10] = 1
    flat = mask.ravel(order="F")
    runs, value, start = [], 0, 0
    for i in range(1, flat.size + 1):
        if i == flat.size or flat[i] != flat[start]:
            if flat[start] != value:
                runs.append(0)
                value = flat[start]
            runs.append(i - start)
            value = 1 - value
            start = i
    (record,) = sa1b_records({"annotations": [{"id": 1, "segmentation": {"size": [H, W], "counts": runs}}]}, H, W)
    assert record["area"] == 20 and record["bbox"] == [6.0, 4.0, 4.0, 5.0]
    assert record["segmentation"]["counts"] == coco_mask.encode(mask)["counts"].decode()


def test_a_sidecar_label_becomes_the_rows_label():
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[2:5, 3:7] = 1
    rle = coco_mask.encode(mask)
    segmentation = {"size": [H, W], "counts": rle["counts"].decode()}
    labelled, plain = sa1b_records({"annotations": [{"id": 1, "segmentation": segmentation, "label": "car"},
                                                     {"id": 2, "segmentation": segmentation}]}, H, W)
    assert (labelled["label"], plain["label"]) == ("car", None)
