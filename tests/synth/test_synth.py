"""`samflow synth` through the command line, on the local S3 server with the tiny models: the
condition maps pixel for pixel, the tars `samflow annotate` reads back with the conditioning
masks as ground truth, the fidelity filter at thresholds that keep or drop everything, and
exactly-once, incremental re-runs."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from samflow.cli.main import main
from tests.helpers.synth_data import read_tars, shapes, write_tar

pytestmark = pytest.mark.slow  # an annotate run and several synth runs through Ray and Prefect

# The first colours of ADE20K's palette (wall, building, sky): instance colours of unlabelled masks
INSTANCE_COLOURS = [(120, 120, 120), (180, 120, 120), (6, 230, 230)]
TINY = ["--profile", "tiny", "--set", "stages.embed.enabled=false"]
FAST = ["--set", "synth.short_side=64", "--set", "synth.steps=2", "--set", "synth.shard_rows=8"]
SOURCES = {"sa_1": (64, 64, 1), "sa_2": (48, 64, 2)}


def _cli(*argv: str) -> dict:
    """Run `samflow ...`, return the JSON summary it prints last."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    text = out.getvalue()
    return json.JSONDecoder().raw_decode(text[text.rindex('{\n "run_id"'):])[0]


def _rle(mask: np.ndarray) -> str:
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def _files(fs, root: str) -> dict[str, int]:
    fs.invalidate_cache()
    return {path: fs.info(path)["size"] for path in fs.find(root)}


@pytest.fixture(scope="module")
def bucket(s3_fs):
    name = f"s3://synth-{uuid.uuid4().hex[:12]}"
    s3_fs.mkdir(name)
    return name


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, bucket, s3_fs, ray_cluster, prefect_server):
    """An annotate run over SA-1B-style tars on S3, their masks as ground-truth rows."""
    local = tmp_path_factory.mktemp("synth-src")
    sidecars = write_tar(local / "sa_000000.tar", SOURCES)
    s3_fs.put_file(str(local / "sa_000000.tar"), f"{bucket}/src/sa_000000.tar")
    dst = f"{bucket}/dst"
    _cli("annotate", f"{bucket}/src", "--out", dst, *TINY, "--set", "input.sa1b_ground_truth=true")
    return {"dst": dst, "local": local, "sidecars": sidecars}


@pytest.fixture(scope="module")
def synthesized(annotated, bucket):
    syn = f"{bucket}/syn"
    args = ("synth", annotated["dst"], "--out", syn, "--variants", "2", *TINY, *FAST,
            "--set", "synth.min_fidelity=0", "--set", "synth.save_conditions=true")
    return {"syn": syn, "args": args, "record": _cli(*args)}


def _syn_tars(s3_fs, syn: str) -> dict[str, dict]:
    s3_fs.invalidate_cache()
    return read_tars([s3_fs.cat_file(p) for p in sorted(s3_fs.glob(f"{syn}/*.tar"))])


def _by_source(samples: dict[str, dict]) -> dict[str, list[dict]]:
    """Samples grouped by the name of the source image they were generated from."""
    grouped: dict[str, list[dict]] = {}
    for sample in samples.values():
        grouped.setdefault(sample["json"]["synth"]["source"]["uri"].rsplit("#", 1)[1][:-4], []).append(sample)
    return grouped


def test_threshold_zero_keeps_every_image_and_writes_sa1b_tars(synthesized, s3_fs):
    counts = synthesized["record"]["counts"]
    assert counts["images_with_trusted_masks"] == len(SOURCES) and counts["by_source"] == {"ground_truth": 2}
    assert counts["generated"] == counts["kept"] == 2 * len(SOURCES) and counts["dropped"] == 0
    grouped = _by_source(_syn_tars(s3_fs, synthesized["syn"]))
    assert sorted(grouped) == sorted(SOURCES) and all(len(v) == 2 for v in grouped.values())
    for name, samples in grouped.items():
        height, width, seed = SOURCES[name]
        for sample in samples:
            meta = sample["json"]
            image = Image.open(io.BytesIO(sample["jpg"]))
            assert image.format == "JPEG" and image.size == (meta["image"]["width"], meta["image"]["height"])
            assert min(image.size) == 64 and [a["segmentation"]["size"] for a in meta["annotations"]] == [
                [image.size[1], image.size[0]]] * 3
            assert meta["synth"]["prompt"] == "a photo" and 0 <= meta["synth"]["scores"]["fidelity"] <= 1
            assert len({a["fidelity_iou"] for a in meta["annotations"]}) >= 1
        if (height, width) == (64, 64):  # generated at the source's size: the source's own masks
            for sample in samples:
                assert [a["segmentation"]["counts"] for a in sample["json"]["annotations"]] == [
                    _rle(m) for m in shapes(height, width, seed)]
        assert len({s["json"]["synth"]["seed"] for s in samples}) == 2  # one seed per variant


def test_condition_maps_pixel_for_pixel(synthesized, s3_fs):
    syn = synthesized["syn"]
    grouped = _by_source(_syn_tars(s3_fs, syn))
    height, width, seed = SOURCES["sa_1"]
    expected = np.zeros((height, width, 3), np.uint8)
    masks = shapes(height, width, seed)
    for index in sorted(range(len(masks)), key=lambda i: -masks[i].sum()):  # largest first, parts on top
        expected[masks[index]] = INSTANCE_COLOURS[index]
    for sample in grouped["sa_1"]:
        png = s3_fs.cat_file(f"{syn}/_conditions/{sample['json']['synth']['key']}.png")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


def test_annotate_reads_syn_back_with_the_conditioning_masks_as_ground_truth(synthesized, bucket, s3_fs):
    syn, out = synthesized["syn"], f"{bucket}/syn-annotated"
    record = _cli("annotate", syn, "--out", out, *TINY, "--set", "input.sa1b_ground_truth=true")
    assert record["counts"]["images"] == 2 * len(SOURCES) and record["counts"]["errors"] == 0
    s3_fs.invalidate_cache()
    rows = pa.concat_tables([pq.read_table(p, filesystem=s3_fs) for p in s3_fs.glob(f"{out}/annotations/*.parquet")])
    truth = [r for r in rows.to_pylist() if r["source"] == "ground_truth"]
    images = pa.concat_tables([pq.read_table(p, filesystem=s3_fs) for p in s3_fs.glob(f"{out}/images/*.parquet")])
    samples = _syn_tars(s3_fs, syn)
    for image in images.to_pylist():
        shipped = samples[image["uri"].rsplit("#", 1)[1][:-4]]["json"]["annotations"]
        mine = sorted((r for r in truth if r["item_id"] == image["item_id"]), key=lambda r: r["annotation_id"])
        assert [r["segmentation"] for r in mine] == [a["segmentation"] for a in shipped]
        assert [(r["area"], r["bbox"]) for r in mine] == [(a["area"], a["bbox"]) for a in shipped]


def test_rerun_writes_nothing_and_new_source_masks_generate_only_their_images(synthesized, annotated, bucket, s3_fs):
    syn = synthesized["syn"]
    before = _files(s3_fs, syn)
    again = _cli(*synthesized["args"])
    assert again["run_id"] is None and again["counts"]["inputs"] == 0
    assert _files(s3_fs, syn) == before

    write_tar(annotated["local"] / "sa_000001.tar", {"sa_3": (64, 64, 3)})
    s3_fs.put_file(str(annotated["local"] / "sa_000001.tar"), f"{bucket}/src/sa_000001.tar")
    _cli("annotate", f"{bucket}/src", "--out", annotated["dst"], *TINY, "--set", "input.sa1b_ground_truth=true")
    third = _cli(*synthesized["args"])
    assert third["counts"]["already_done"] == 2 * len(SOURCES) and third["counts"]["generated"] == 2
    assert sorted(_by_source(_syn_tars(s3_fs, syn))) == ["sa_1", "sa_2", "sa_3"]


def test_threshold_above_one_drops_every_image_and_counts_why(annotated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative SYN
    # the engine's own masks this time, all of them trusted (a tiny model's scores are low)
    engine = ["--set", "synth.sources=[engine]", "--set", "synth.min_predicted_iou=0",
              "--set", "synth.min_stability_score=0", "--set", "synth.min_area=1"]
    args = ("synth", annotated["dst"], "--out", "strict", *TINY, *FAST, *engine, "--set", "synth.min_fidelity=1.01")
    record = _cli(*args)
    images = record["counts"]["images_with_trusted_masks"]  # one more once the incremental test ran
    assert record["counts"]["by_source"] == {"engine": images}
    assert images >= len(SOURCES) and record["counts"]["generated"] == record["counts"]["dropped"] == images
    assert record["counts"]["kept"] == 0 and record["dropped_by_reason"] == {"low_fidelity": images}
    assert not list(Path("strict").glob("*.tar"))
    candidates = pq.read_table(Path("strict/_candidates")).to_pylist()
    assert len(candidates) == images and not any(c["kept"] for c in candidates)
    assert all(c["drop_reason"] == "low_fidelity" and 0 <= c["fidelity"] < 1.01 for c in candidates)
    assert _cli(*args)["counts"]["inputs"] == 0  # dropped candidates are settled too
