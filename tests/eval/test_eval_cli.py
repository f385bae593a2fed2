"""``samflow eval`` through the command line on the S3 server: runs whose masks are known (the
sample scenes' exact masks, some moved) against COCO ground truth made from the scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samflow.scenes.sample import load_gt, write_sample_dataset
from samflow.schemas import rle
from tests.helpers.known_run import mask_record, samflow, upload_scenes, write_run


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, s3_bucket, s3_fs):
    """Three sample scenes on S3 under SRC, their exact masks, and a local COCO file of them
    naming images by their path relative to SRC."""
    local = tmp_path_factory.mktemp("scenes")
    paths = write_sample_dataset(local, n_synthetic=3, seed=11, include_skimage=False)
    src = f"{s3_bucket}/src"
    uris = upload_scenes(s3_fs, local, src)
    truth = [load_gt(path)[0] for path in paths]
    coco = _coco([path.name for path in paths], truth)
    gt_file = local / "gt.json"
    gt_file.write_text(json.dumps(coco))
    return {"src": src, "uris": uris, "truth": truth, "gt": gt_file, "names": [p.name for p in paths]}


def _coco(names: list[str], truth: list[np.ndarray]) -> dict:
    images, annotations = [], []
    for image_id, (name, masks) in enumerate(zip(names, truth), start=1):
        height, width = masks.shape[1:]
        images.append({"id": image_id, "file_name": name, "height": int(height), "width": int(width)})
        for mask in masks:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "segmentation": rle.encode(mask), "area": int(mask.sum()), "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}


def _sizes(truth: list[np.ndarray]) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in masks.shape[1:]) for masks in truth]


def _eval(*args: str) -> dict:
    done = samflow("eval", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_run_scores_one_against_a_coco_export_of_its_own_masks(scenes, s3_bucket, tmp_path):
    dst = f"{s3_bucket}/perfect"
    records = [[mask_record(m, score=0.5 + 0.1 * k) for k, m in enumerate(masks)] for masks in scenes["truth"]]
    write_run(dst, scenes["src"], scenes["uris"], _sizes(scenes["truth"]), records)
    exported = tmp_path / "own.json"
    assert samflow("export", "coco", dst, str(exported)).returncode == 0
    result = _eval(dst, "--gt", str(exported))
    total = sum(len(masks) for masks in scenes["truth"])
    for name in ("miou", "recall_50", "recall_75", "mask_ap", "mask_ap50", "mask_ap75", "mask_ar100"):
        assert result[name] == pytest.approx(1.0), name
    assert (result["images"], result["gt_masks"], result["pred_masks"]) == (3, total, total)
    # the scenes' own ground truth, named relative to SRC, from another folder (relative path)
    result = _eval(dst, "--gt", str(scenes["gt"]))
    assert result["miou"] == pytest.approx(1.0) and result["mask_ap"] == pytest.approx(1.0)
    # recorded under DST/_eval/ and shown by `samflow runs`
    listed = json.loads(samflow("runs", dst, "--json").stdout)
    assert listed[0]["miou"] == pytest.approx(1.0) and listed[0]["mask_ap"] == pytest.approx(1.0)
    table = samflow("runs", dst).stdout
    assert "miou" in table and "1.0" in table
    report = json.loads(samflow("runs", dst, listed[0]["run_id"], "--json").stdout)
    assert report["quality"]["miou"] == pytest.approx(1.0) and report["quality"]["gt"] == str(scenes["gt"])


def test_a_moved_mask_scores_its_iou(scenes, s3_bucket):
    dst = f"{s3_bucket}/moved"
    truth = scenes["truth"]
    moved, iou = _moved_below(truth[0][0], 0.75)
    records = [[mask_record(m) for m in masks] for masks in truth]
    records[0][0] = mask_record(moved)
    write_run(dst, scenes["src"], scenes["uris"], _sizes(truth), records)
    best = np.ones(sum(len(masks) for masks in truth))
    best[0] = iou  # the scenes' masks do not overlap: nothing else matches the moved one better
    result = _eval(dst, "--gt", str(scenes["gt"]))
    assert 0.5 <= iou < 0.75
    assert result["miou"] == pytest.approx(best.mean())
    assert result["recall_50"] == pytest.approx(1.0)
    assert result["recall_75"] == pytest.approx((best >= 0.75).mean()) and result["recall_75"] < 1.0
    assert result["mask_ap50"] == pytest.approx(1.0) and result["mask_ap"] < 1.0


def _moved_below(mask: np.ndarray, limit: float) -> tuple[np.ndarray, float]:
    """The mask moved right by the fewest pixels that bring its IoU with itself under ``limit``."""
    for shift in range(1, mask.shape[1]):
        moved = np.zeros_like(mask)
        moved[:, shift:] = mask[:, :-shift]
        iou = float(np.logical_and(moved, mask).sum() / np.logical_or(moved, mask).sum())
        if iou < limit:
            return moved, iou
    raise AssertionError("the mask cannot be moved enough")


def test_ground_truth_of_unknown_images_or_another_size_is_named_and_left_out(scenes, s3_bucket, tmp_path):
    dst = f"{s3_bucket}/partial"
    truth = scenes["truth"]
    write_run(dst, scenes["src"], scenes["uris"][:2], _sizes(truth)[:2], [[mask_record(m) for m in truth[0]], []])
    coco = _coco(["elsewhere/" + scenes["names"][0], scenes["names"][1], "not_in_the_run.png"], truth)
    coco["images"][1]["width"] += 3  # the same name at another size
    gt_file = tmp_path / "partial.json"
    gt_file.write_text(json.dumps(coco))
    done = samflow("eval", dst, "--gt", gt_file.name, "--json", cwd=tmp_path)  # a relative path
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["images"], result["unknown_images"], result["size_mismatch"]) == (1, 1, 1)
    assert result["gt_masks"] == len(truth[0]) and result["miou"] == pytest.approx(1.0)
    assert "not_in_the_run.png" in done.stderr and "another size" in done.stderr and "Traceback" not in done.stderr

    only_unknown = tmp_path / "unknown.json"
    only_unknown.write_text(json.dumps(_coco(["nowhere.png"], truth[:1])))
    done = samflow("eval", dst, "--gt", str(only_unknown))
    assert done.returncode == 2 and "nowhere.png" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    done = samflow("eval", dst, "--gt", str(tmp_path / "missing.json"))
    assert done.returncode == 2 and "not found" in done.stderr


def test_the_runs_own_ground_truth_rows_are_the_default_truth(scenes, s3_bucket):
    dst = f"{s3_bucket}/sidecars"
    truth = scenes["truth"]
    records = [[mask_record(m) for m in masks] + [mask_record(m, source="ground_truth") for m in masks]
               for masks in truth[:1]]
    records[0][0] = mask_record(np.zeros_like(truth[0][0]) | truth[0][1])  # a duplicate of mask 1
    write_run(dst, scenes["src"], scenes["uris"][:1], _sizes(truth)[:1], records)
    result = _eval(dst)
    n = len(truth[0])
    assert result["gt"] == "run" and result["gt_masks"] == n and result["pred_masks"] == n
    assert result["miou"] == pytest.approx((n - 1) / n) and result["recall_50"] == pytest.approx((n - 1) / n)

    bare = f"{s3_bucket}/no-truth"
    write_run(bare, scenes["src"], scenes["uris"][:1], _sizes(truth)[:1], [[mask_record(truth[0][0])]])
    done = samflow("eval", bare, "--gt", "run")
    assert done.returncode == 2 and "no ground-truth masks" in done.stderr


@pytest.mark.slow
def test_a_tiny_annotate_run_on_s3_scores_one_against_its_own_export(scenes, s3_bucket, tmp_path, capsys,
                                                                      ray_cluster, prefect_server):
    from samflow.cli.main import main

    dst = f"{s3_bucket}/annotated"
    assert main(["annotate", scenes["src"], "--out", dst, "--profile", "tiny"]) == 0
    capsys.readouterr()
    exported = tmp_path / "own.json"
    assert samflow("export", "coco", dst, str(exported)).returncode == 0
    own = json.loads(exported.read_text())
    result = _eval(dst, "--gt", str(exported))
    assert result["images"] == 3 and result["gt_masks"] == len(own["annotations"]) == result["pred_masks"] > 0
    assert result["miou"] == pytest.approx(1.0) and result["recall_75"] == pytest.approx(1.0)
    assert result["mask_ap50"] == pytest.approx(1.0)
    # against the scenes' truth the untrained model scores something in [0, 1], figured on every mask
    result = _eval(dst, "--gt", str(scenes["gt"]))
    assert result["images"] == 3 and result["gt_masks"] == sum(len(m) for m in scenes["truth"])
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["mask_ap"] <= 1.0
