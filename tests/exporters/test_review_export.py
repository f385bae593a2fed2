"""Review export (Label Studio brush predictions of doubted masks) and COCO categories from the
vocabulary: unit tests on built tables, then the whole user path on a real tiny concept run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface
from pycocotools.coco import COCO

from samflow.actors.batch import object_column
from samflow.exporters.coco import to_coco
from samflow.exporters.review import needs_review, to_label_studio
from samflow.schemas import masks as mask_column
from samflow.schemas import rle
from samflow.schemas.rows import build_tables

VOCABULARY = ["cat", "dog", "traffic cone"]


def _record(mask, source, label, score, verified=None):
    ys, xs = np.nonzero(mask)
    return {
        "segmentation": rle.encode(mask), "bbox": [float(xs.min()), float(ys.min()),
                                                   float(xs.max() - xs.min()), float(ys.max() - ys.min())],
        "area": int(mask.sum()), "predicted_iou": 0.9 if source != "concept" else None,
        "stability_score": None, "point_coords": [], "crop_box": [0.0, 0.0, 20.0, 12.0], "source": source,
        "label": label, "label_score": score, "verified": verified,
        "verify_score": None if verified is None else 0.4,
    }


@pytest.fixture
def run_tables():
    rng = np.random.default_rng(5)
    masks = [rng.random((12, 20)) < p for p in (0.2, 0.4, 0.5, 0.6, 0.3)]
    records = [
        _record(masks[0], "concept", "cat", 0.9, verified=True),  # confident and verified: no review
        _record(masks[1], "concept", "dog", 0.9, verified=False),  # CLIP disagrees
        _record(masks[2], "concept", "traffic cone", 0.3, verified=True),  # low score
        _record(masks[3], "grid", "cat", 0.2),  # not a concept mask
        _record(masks[4], "grid", None, None),  # class-agnostic
    ]
    uris = ["s3://b/a.jpg", "s3://b/b.jpg"]
    batch = {
        "uri": object_column(uris), "item_id": object_column(["a", "b"]),
        "frame_index": np.zeros(2, np.int32), "timestamp_s": np.full(2, np.nan),
        "width": np.array([20, 20], np.int32), "height": np.array([12, 12], np.int32),
        "error_stage": object_column(["", ""]), "error_type": object_column(["", ""]),
        "error_message": object_column(["", ""]),
        "masks": mask_column.from_records([records[:3], records[3:]]),
    }
    tables = build_tables(batch, "r1")
    return tables["images"], tables["annotations"], masks


def test_review_tasks_validate_in_label_studio_and_masks_decode_back(run_tables):
    images, annotations, masks = run_tables
    tasks, config = to_label_studio(images, annotations, min_score=0.5)
    assert len(tasks) == 1 and tasks[0]["data"]["image"] == "s3://b/a.jpg"
    regions = tasks[0]["predictions"][0]["result"]
    assert [r["value"]["brushlabels"] for r in regions] == [["dog"], ["traffic cone"]]
    interface = LabelInterface(config)
    assert interface.validate_prediction(tasks[0]["predictions"][0], return_errors=True) == []
    wrong = json.loads(json.dumps(tasks[0]["predictions"][0]))
    wrong["result"][0]["value"]["brushlabels"] = ["zebra"]  # not in the config: the check is real
    assert interface.validate_prediction(wrong, return_errors=True)
    # the data side (validate_task itself cannot take predictions in this SDK version)
    assert interface.validate_task({"data": tasks[0]["data"]})
    assert not interface.validate_task({"data": {"img": "elsewhere"}})
    for region, mask in zip(regions, (masks[1], masks[2])):
        h, w = region["original_height"], region["original_width"]
        decoded = decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0
        np.testing.assert_array_equal(decoded, mask)
    # a stricter score sends the confident one too; other sources only when asked
    assert len(needs_review(annotations, min_score=0.95)) == 3
    assert len(needs_review(annotations, min_score=0.5, sources=["concept", "grid"])) == 3
    tasks, _ = to_label_studio(images, annotations, min_score=0.0)
    assert [r["value"]["brushlabels"] for r in tasks[0]["predictions"][0]["result"]] == [["dog"]]


def test_coco_categories_are_object_then_vocabulary(run_tables, tmp_path):
    images, annotations, masks = run_tables
    coco_json = to_coco(images, annotations, vocabulary=VOCABULARY)
    assert [c["name"] for c in coco_json["categories"]] == ["object", *VOCABULARY]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco_json))
    coco = COCO(str(path))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    rows = {r["annotation_id"]: r for r in annotations.to_pylist()}
    for ann in coco.loadAnns(coco.getAnnIds()):
        row = rows[ann["samflow_annotation_id"]]
        assert names[ann["category_id"]] == (row["label"] or "object")
        if row["source"] == "concept":
            assert ann["score"] == pytest.approx(row["label_score"])
    assert len(coco.getAnnIds(catIds=[1])) == 1  # the class-agnostic mask


def test_concept_run_exports_review_and_coco(tmp_path, capsys, ray_cluster, prefect_server):
    from samflow.cli.main import main
    from samflow.scenes.sample import write_sample_dataset

    write_sample_dataset(tmp_path / "in", n_synthetic=2, seed=3, include_skimage=False)
    out = tmp_path / "out"
    assert main(["annotate", str(tmp_path / "in"), "--out", str(out), "--profile", "tiny",
                 "--set", "stages.concepts.enabled=true", "--set", "stages.concepts.score_thresh=0.0",
                 "--set", "stages.concepts.max_instances=2", "--set", f"labels.vocabulary={VOCABULARY}"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["errors"] == 0

    assert main(["export", "coco", str(out), str(tmp_path / "coco.json")]) == 0
    capsys.readouterr()
    coco = COCO(str(tmp_path / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())][: 1 + len(VOCABULARY)] == ["object", *VOCABULARY]
    concept_anns = [a for a in coco.loadAnns(coco.getAnnIds()) if a["source"] == "concept"]
    assert len(concept_anns) == counts["images"] * len(VOCABULARY) * 2  # tiny scores all pass 0.0
    assert all(isinstance(a["verified"], bool) and 0 <= a["verify_score"] <= 1 for a in concept_anns)
    assert {a["source"] for a in coco.loadAnns(coco.getAnnIds())} == {"concept", "grid"}

    assert main(["export", "review", str(out), str(tmp_path / "review.json"), "--min-score", "1.0"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["masks"] == len(concept_anns) and summary["tasks"] == counts["images"]
    tasks = json.loads((tmp_path / "review.json").read_text())
    interface = LabelInterface((tmp_path / "review.xml").read_text())
    by_id = {a["samflow_annotation_id"]: a for a in concept_anns}
    for task in tasks:
        assert interface.validate_prediction(task["predictions"][0], return_errors=True) == []
        for region in task["predictions"][0]["result"]:
            h, w = region["original_height"], region["original_width"]
            decoded = decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0
            ours = coco.annToMask(by_id[region["meta"]["samflow_annotation_id"]]).astype(bool)
            np.testing.assert_array_equal(decoded, ours)


def test_review_of_an_empty_destination_is_a_user_error(tmp_path, capsys):
    from samflow.cli.main import main

    assert main(["export", "review", str(tmp_path / "nothing"), str(tmp_path / "review.json")]) == 2
    err = capsys.readouterr().err
    assert "no committed images" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
