"""``samflow review import`` through the command line on the S3 server: the tasks ``samflow
export review`` wrote, edited the way Label Studio writes an annotation (regions made with
label-studio-sdk's converters), come back as exactly the reviews a person made."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from label_studio_sdk.converter.imports.coco import create_bbox, create_segmentation

from samflow.config import StorageConfig
from samflow.scenes.sample import load_gt, write_sample_dataset
from samflow.schemas import rle
from samflow.store.catalog import Catalog
from tests.helpers.known_run import mask_record, samflow, upload_scenes, write_run

REVIEWER = "annotator@example.com"
UPDATED = "2026-11-30T09:15:00.250000Z"


@pytest.fixture(scope="module")
def run(tmp_path_factory, s3_bucket, s3_fs):
    """A run of two sample scenes whose masks are the scenes' exact masks, labelled and doubted
    (CLIP disagreed), so that `export review` offers them all; and its review tasks."""
    local = tmp_path_factory.mktemp("scenes")
    paths = write_sample_dataset(local, n_synthetic=2, seed=5, include_skimage=False)
    uris = upload_scenes(s3_fs, local, f"{s3_bucket}/src")
    truth = [load_gt(path) for path in paths]
    records = [[mask_record(m, source="concept", label=name, verified=False) for m, name in zip(*scene)]
               for scene in truth]
    dst = f"{s3_bucket}/run"
    items = write_run(dst, f"{s3_bucket}/src", uris, [m.shape[1:] for m, _ in truth], records)
    out = tmp_path_factory.mktemp("review") / "tasks.json"
    done = samflow("export", "review", dst, str(out))
    assert done.returncode == 0, done.stderr
    return {"dst": dst, "items": items, "truth": truth, "tasks": json.loads(out.read_text()), "dir": out.parent}


def _reviews(dst: str) -> list[dict]:
    table = Catalog(dst, StorageConfig()).read_table("reviews")
    return [] if table is None else table.to_pylist()


def _box(shape, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _annotate(task: dict, result: list[dict], **extra) -> dict:
    """The task as Label Studio exports it once a person submitted ``result``."""
    edited = copy.deepcopy(task)
    edited.update(id=extra.pop("task_id", 1), predictions=[{"id": 7, **task["predictions"][0]}])
    edited["annotations"] = [{
        "id": 100, "completed_by": {"id": 3, "email": REVIEWER}, "result": result, "was_cancelled": False,
        "ground_truth": False, "created_at": "2026-11-30T09:00:00.000000Z", "updated_at": UPDATED,
        "lead_time": 41.5, "parent_prediction": 7, **extra,
    }]
    return edited


def test_a_label_studio_export_imports_exactly_and_only_once(run, tmp_path):
    items, truth = run["items"], run["truth"]
    by_item = {task["data"]["samflow_item_id"]: task for task in run["tasks"]}
    task = by_item[items[0]]
    offered = task["predictions"][0]["result"]
    assert len(offered) >= 3
    shape = truth[0][0].shape[1:]
    height, width = shape
    # the person keeps region 0, repaints region 1 (brush), deletes region 2, keeps the rest,
    # draws a polygon and a rectangle of their own
    result = [copy.deepcopy(r) for r in offered if r["id"] != offered[2]["id"]]
    edited_mask = truth[0][0][1] | _box(shape, 0, 6, 0, 9)
    result[1]["value"]["rle"] = mask2rle(edited_mask.astype(np.uint8) * 255)
    polygon_mask = _box(shape, 10, 30, 20, 44)
    polygon = create_segmentation(1, [20, 10, 44, 10, 44, 30, 20, 30], {1: "scribble"}, "label",
                                  height, width, "image")
    rectangle_mask = _box(shape, 40, 52, 60, 75)
    rectangle = create_bbox({"bbox": [60, 40, 15, 12], "category_id": 2}, {2: "sticker"}, "label",
                            height, width, "image")
    export = [
        _annotate(task, [*result, polygon, rectangle]),
        _annotate(by_item[items[1]], [], task_id=2, was_cancelled=True),  # skipped: not a review
        _annotate(task, [], task_id=3) | {"data": {"image": "s3://elsewhere/x.png", "samflow_item_id": "nope"}},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))

    done = samflow("review", "import", run["dst"], str(path), "--format", "label-studio")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    n = len(offered)
    assert summary["written"] and (summary["accepted"], summary["corrected"], summary["rejected"],
                                   summary["added"], summary["errors"]) == (n - 2, 1, 1, 2, 1)
    assert "nope" in done.stderr and "Traceback" not in done.stderr

    rows = _reviews(run["dst"])
    assert len(rows) == n + 2
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    when = dt.datetime.fromisoformat(UPDATED)
    for row in rows:
        assert (row["item_id"], row["reviewer"], row["reviewed_at"], row["source_sha256"]) == \
            (items[0], REVIEWER, when, digest)
    by_annotation = {row["annotation_id"]: row for row in rows if row["annotation_id"]}
    for index, region in enumerate(offered):
        row = by_annotation[region["meta"]["samflow_annotation_id"]]
        expected = {1: "corrected", 2: "rejected"}.get(index, "accepted")
        assert row["action"] == expected and row["label"] == truth[0][1][index]
        if expected == "rejected":
            assert row["segmentation"] is None
        else:
            want = edited_mask if index == 1 else truth[0][0][index]
            np.testing.assert_array_equal(rle.decode(row["segmentation"]), want)
    added = sorted((row for row in rows if row["action"] == "added"), key=lambda r: r["label"])
    assert [row["label"] for row in added] == ["scribble", "sticker"]
    np.testing.assert_array_equal(rle.decode(added[0]["segmentation"]), polygon_mask)
    np.testing.assert_array_equal(rle.decode(added[1]["segmentation"]), rectangle_mask)
    errors = Catalog(run["dst"], StorageConfig()).read_table("review_errors").to_pylist()
    assert len(errors) == 1 and errors[0]["error_type"] == "unknown_item"

    # the same file again: nothing written; the reviewed masks are the run's ground truth now
    again = samflow("review", "import", run["dst"], str(path))
    assert again.returncode == 0 and json.loads(again.stdout)["written"] is False
    assert len(_reviews(run["dst"])) == n + 2
    scored = samflow("eval", run["dst"], "--json")
    assert scored.returncode == 0, scored.stderr
    figures = json.loads(scored.stdout)
    assert (figures["images"], figures["gt_masks"]) == (1, n - 1 + 2)


def test_a_coco_file_adds_reviews_without_losing_earlier_ones(run, tmp_path):
    before = _reviews(run["dst"])
    masks, _ = run["truth"][1]
    height, width = masks.shape[1:]
    coco = {
        "images": [{"id": 1, "file_name": f"nested/{run['tasks'][0]['data']['image'].rsplit('/', 1)[-1]}",
                    "height": height, "width": width, "samflow_item_id": run["items"][1]},
                   {"id": 2, "file_name": "not_in_the_run.png", "height": 10, "width": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]]},
                        {"id": 2, "image_id": 2, "category_id": 1, "iscrowd": 0,
                         "segmentation": [[1, 1, 5, 1, 5, 5]]}],
        "categories": [{"id": 1, "name": "lamp"}],
    }
    path = tmp_path / "cvat.json"
    path.write_text(json.dumps(coco))
    done = samflow("review", "import", run["dst"], str(path))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["format"] == "coco" and (summary["added"], summary["errors"]) == (1, 1)
    rows = _reviews(run["dst"])
    assert len(rows) == len(before) + 1
    assert {r["review_id"] for r in before} <= {r["review_id"] for r in rows}
    new = next(r for r in rows if r["source_sha256"] == summary["sha256"])
    assert (new["item_id"], new["label"], new["action"]) == (run["items"][1], "lamp", "added")
    np.testing.assert_array_equal(rle.decode(new["segmentation"]), _box((height, width), 5, 15, 5, 25))

    wrong = samflow("review", "import", run["dst"], str(path), "--format", "label-studio")
    assert wrong.returncode == 0 and json.loads(wrong.stdout)["written"] is False  # same file: imported already
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"not": "a review"}))
    bad = samflow("review", "import", run["dst"], str(other), "--format", "coco")
    assert bad.returncode == 2 and "not a COCO" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
