"""``samflow export review --mode semi`` on the S3 server: the sure masks pre-accepted, the
doubtful ones and the uncovered regions (largest first, found independently here with scipy)
asked for; the tasks validate in Label Studio and come back through ``review import``."""

from __future__ import annotations

import copy
import json

import numpy as np
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface
from scipy import ndimage

from samflow.scenes.sample import load_gt, write_sample_dataset
from tests.helpers.known_run import mask_record, samflow, upload_scenes, write_run

MAX_UNCOVERED = 3


def _brush(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def test_semi_export_pre_accepts_sure_masks_and_asks_for_doubtful_ones_and_gaps(tmp_path, s3_bucket, s3_fs):
    local = tmp_path / "scenes"
    paths = write_sample_dataset(local, n_synthetic=1, seed=9, include_skimage=False)
    masks, _ = load_gt(paths[0])
    assert len(masks) >= 3
    uris = upload_scenes(s3_fs, local, f"{s3_bucket}/semi-src")
    full = np.ones((20, 30), bool)
    records = [[mask_record(masks[0], score=0.95, stability=0.97),  # sure
                mask_record(masks[1], score=0.6, stability=0.97),  # the model doubts its IoU
                mask_record(masks[2], score=None, stability=None, source="concept", label="cat", verified=False)],
               [mask_record(full, score=0.99, stability=0.99)]]  # all sure, nothing uncovered: no task
    dst = f"{s3_bucket}/semi"
    items = write_run(dst, f"{s3_bucket}/semi-src", [uris[0], f"{s3_bucket}/semi-src/full.png"],
                      [masks.shape[1:], full.shape], records)

    out = tmp_path / "semi.json"
    done = samflow("export", "review", dst, str(out), "--mode", "semi", "--max-uncovered", str(MAX_UNCOVERED))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    tasks = json.loads(out.read_text())
    assert (summary["tasks"], summary["pre_accepted"], summary["doubtful"], summary["images_all_sure"]) == (1, 1, 2, 1)
    task = tasks[0]
    assert task["data"]["samflow_item_id"] == items[0]
    regions = task["predictions"][0]["result"]
    interface = LabelInterface((tmp_path / "semi.xml").read_text())
    assert interface.validate_prediction(task["predictions"][0], return_errors=True) == []

    offered = [r for r in regions if r["from_name"] != "todo"]
    assert [r["meta"]["pre_accepted"] for r in offered] == [True, False, False]
    assert "predicted IoU" in offered[1]["meta"]["doubts"][0] and "verif" in offered[2]["meta"]["doubts"][0]
    for region, mask in zip(offered, masks[:3], strict=True):
        np.testing.assert_array_equal(_brush(region), mask)

    uncovered = ~(masks[0] | masks[1] | masks[2])
    parts, count = ndimage.label(uncovered)  # 4-connected
    areas = ndimage.sum(uncovered, parts, index=range(1, count + 1))
    smallest = np.ceil(0.005 * uncovered.size)
    expected = [parts == k + 1 for k in np.argsort(-areas, kind="stable") if areas[k] >= smallest][:MAX_UNCOVERED]
    todo = [r for r in regions if r["from_name"] == "todo"]
    assert len(todo) == len(expected) == summary["uncovered_regions"] >= 1
    for region, mask in zip(todo, expected, strict=True):
        np.testing.assert_array_equal(_brush(region), mask)

    # a person leaves everything as it is: the offered masks are accepted, the hints are no masks
    export = copy.deepcopy(task)
    export.update(id=1, annotations=[{"id": 5, "completed_by": 2, "result": copy.deepcopy(regions),
                                      "was_cancelled": False, "updated_at": "2026-12-01T08:00:00Z"}])
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps([export]))
    done = samflow("review", "import", dst, str(reviewed))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["accepted"], result["corrected"], result["added"], result["rejected"]) == (3, 0, 0, 0)
