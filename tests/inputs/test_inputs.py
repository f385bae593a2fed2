"""Input formats beyond a folder of files, on the local S3 server: a manifest, WebDataset tars
laid out like SA-1B (with its JSON), Parquet with image bytes; broken members and corrupt tars
become error rows; a re-run writes nothing; a new shard alone is processed. Plus the done-set
plan (`samflow plan`)."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from samflow.config import load_config
from samflow.flows.annotate import annotate_dataset, make_plan
from samflow.inputs.formats import InputFormatError, container_of
from samflow.inputs.plan import detect_format, resolve_source
from samflow.store.doneset import BUCKETS, done_table, with_bucket

RNG = np.random.default_rng(7)


def _png(height: int = 40, width: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _sa1b_tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _sa1b_annotation(ann_id: int, height: int = 36, width: int = 44) -> dict:
    """One annotation as SA-1B ships it: a random box-shaped mask as COCO RLE, with its stats."""
    mask = np.zeros((height, width), np.uint8, order="F")
    y, x = RNG.integers(0, height // 2), RNG.integers(0, width // 2)
    mask[y : y + RNG.integers(2, height // 2), x : x + RNG.integers(2, width // 2)] = 1
    rle = coco_mask.encode(mask)
    return {"id": ann_id, "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
            "bbox": coco_mask.toBbox(rle).tolist(), "area": int(coco_mask.area(rle)),
            "predicted_iou": 0.9, "stability_score": 0.95, "point_coords": [[float(x), float(y)]],
            "crop_box": [0.0, 0.0, float(width), float(height)]}


def _sa1b_members(first: int, count: int, broken: int | None = None, bad_gt: int | None = None) -> dict[str, bytes]:
    """Pairs sa_N.jpg + sa_N.json as SA-1B lays them out, two annotations each; ``bad_gt``'s
    second annotation has RLE runs that do not cover its image."""
    members = {}
    for n in range(first, first + count):
        members[f"sa_{n}.jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg" if n == broken else _jpeg()
        annotations = [_sa1b_annotation(1000 * n + k) for k in range(2)]
        if n == bad_gt:
            annotations[1]["segmentation"]["size"] = [36, 45]
        sidecar = {"image": {"image_id": n, "file_name": f"sa_{n}.jpg", "width": 44, "height": 36},
                   "annotations": annotations}
        members[f"sa_{n}.json"] = json.dumps(sidecar).encode()
    return members


def _cut_after_first_pair(tar_bytes: bytes) -> bytes:
    """The tar with garbage from its third member's header on: sa_N.jpg + .json stay intact."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        third = tar.getmembers()[2].offset
    return tar_bytes[:third] + b"\x13" * 1024


def _config(endpoint: str, *overrides: str) -> dict:
    cfg = load_config(profile="tiny", overrides=[f"storage.endpoint_url={endpoint}", "output.shard_rows=4",
                                                 "stages.embed.enabled=false", *overrides])
    return cfg.model_dump(mode="json")


def _uris(s3_fs, dst: str, table: str) -> list[str]:
    s3_fs.invalidate_cache()
    files = sorted(s3_fs.glob(f"{dst}/{table}/*.parquet"))
    return sorted(u for f in files for u in pq.read_table(f, filesystem=s3_fs).column("uri").to_pylist())


def _error_types(s3_fs, dst: str) -> dict[str, str]:
    s3_fs.invalidate_cache()
    files = sorted(s3_fs.glob(f"{dst}/errors/*.parquet"))
    rows = [r for f in files for r in pq.read_table(f, filesystem=s3_fs).to_pylist()]
    return {r["uri"]: r["error_type"] for r in rows}


def _files(s3_fs, prefix: str) -> set[str]:
    s3_fs.invalidate_cache()
    return {p for p in s3_fs.find(prefix) if "/_runs/" not in p}


# ------------------------------------------------------------------------------ no cluster


def test_format_detection_and_containers(tmp_path):
    storage = load_config().storage
    assert detect_format(["s3://b/a.tar", "s3://b/b.tar"], storage) == "webdataset"
    assert detect_format(["s3://b/a.jpg", "s3://b/b.tar"], storage) == "files"
    assert detect_format(["/x/list.jsonl"], storage) == "manifest"
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["1"], "jpg": pa.array([b"x"], pa.binary())}), table)
    assert detect_format([str(table)], storage) == "parquet"
    pq.write_table(pa.table({"uri": ["s3://b/a.jpg"]}), tmp_path / "m.parquet")
    assert detect_format([str(tmp_path / "m.parquet")], storage) == "manifest"
    assert container_of("s3://b/shard-0.tar#dir/sa_1.jpg") == "s3://b/shard-0.tar"
    assert container_of("s3://b/x.parquet#17") == "s3://b/x.parquet"
    assert container_of("s3://b/photo#1.jpg") == "" and container_of("s3://b/a.tar") == ""


def test_a_manifest_without_uri_column_is_a_user_error(tmp_path):
    pq.write_table(pa.table({"path": ["a.jpg"]}), tmp_path / "m.parquet")
    cfg = load_config(overrides=["input.format=manifest"])
    with pytest.raises(InputFormatError, match="no 'uri' column"):
        resolve_source(str(tmp_path / "m.parquet"), cfg, str(tmp_path / "out"))


def test_members_of_a_container_share_a_bucket_and_buckets_are_stable():
    keys = [f"s3://b/s.tar#sa_{n}.jpg" for n in range(50)] + [f"s3://b/l/{n}.png" for n in range(200)]
    table = with_bucket(done_table(keys, [container_of(k) for k in keys]))
    buckets = table.column("bucket").to_pylist()
    assert len(set(buckets[:50])) == 1  # one tar, one bucket: the pipeline reads it once
    assert len(set(buckets[50:])) > BUCKETS // 2  # loose keys spread out
    assert with_bucket(done_table(keys, [container_of(k) for k in keys])).column("bucket").to_pylist() == buckets


# --------------------------------------------------------------------- real S3, Ray, Prefect


@pytest.fixture(scope="module")
def root(s3_fs):
    name = f"s3://inputs-{uuid.uuid4().hex[:12]}"
    s3_fs.mkdir(name)
    return name


def _read_all(s3_fs, dst: str, table: str) -> list[dict]:
    s3_fs.invalidate_cache()
    return [r for f in sorted(s3_fs.glob(f"{dst}/{table}/*.parquet")) for r in pq.read_table(f, filesystem=s3_fs).to_pylist()]


def _assert_ground_truth(s3_fs, dst: str, sidecars: dict[str, dict]) -> None:
    """Every image row carries its sidecar as JSON, and its SA-1B annotations are its
    ground_truth rows: same RLE, area, box and id, in order."""
    images = _read_all(s3_fs, dst, "images")
    assert images and all(json.loads(row["meta_json"]) == sidecars[row["uri"]] for row in images)
    truth = [r for r in _read_all(s3_fs, dst, "annotations") if r["source"] == "ground_truth"]
    for image in images:
        rows = sorted((r for r in truth if r["item_id"] == image["item_id"]), key=lambda r: r["annotation_id"])
        shipped = sidecars[image["uri"]]["annotations"]
        assert [r["source_id"] for r in rows] == [str(a["id"]) for a in shipped]
        assert [r["segmentation"] for r in rows] == [a["segmentation"] for a in shipped]
        assert [(r["area"], r["bbox"]) for r in rows] == [(a["area"], a["bbox"]) for a in shipped]


@pytest.mark.slow
def test_webdataset_sa1b_tars_exactly_once_and_incremental(root, s3_fs, s3_server, ray_cluster, prefect_server):
    src, dst = f"{root}/wds", f"{root}/wds-out"
    config = _config(s3_server, "input.sa1b_ground_truth=true")
    tars = {
        "sa_000000.tar": _sa1b_members(1, 3, broken=2),
        # sa_5's second annotation does not fit its image; sa_40's sidecar is not JSON
        "sa_000001.tar": {**_sa1b_members(4, 2, bad_gt=5), "sa_40.jpg": _jpeg(), "sa_40.json": b"{not json"},
        "sa_000002.tar": _sa1b_members(6, 2),
    }
    sidecars = {f"{src}/{tar}#{name[:-5]}.jpg": json.loads(data) for tar, members in tars.items()
                for name, data in members.items() if name.endswith(".json") and data.startswith(b"{\"")}
    for tar, members in tars.items():
        data = _sa1b_tar(members)
        s3_fs.pipe_file(f"{src}/{tar}", _cut_after_first_pair(data) if tar == "sa_000002.tar" else data)
    manifest = annotate_dataset(src, dst, config=config)

    images, errors = _uris(s3_fs, dst, "images"), _error_types(s3_fs, dst)
    assert images == sorted(f"{src}/sa_00000{t}.tar#sa_{n}.jpg" for t, n in [(0, 1), (0, 3), (1, 4), (2, 6)])
    assert f"{src}/sa_000000.tar#sa_2.jpg" in errors  # the broken member, alone
    assert {uri: kind for uri, kind in errors.items() if not uri.endswith("#sa_2.jpg")} == {
        f"{src}/sa_000001.tar#sa_5.jpg": "bad_ground_truth",
        f"{src}/sa_000001.tar#sa_40.jpg": "bad_sidecar",
        f"{src}/sa_000002.tar": "corrupt_tar",
    }
    assert len(images) + len(errors) == manifest["counts"]["inputs"] == 8
    assert not any(u.endswith(".json") for u in images + list(errors))  # sidecars are not items
    _assert_ground_truth(s3_fs, dst, sidecars)

    before = _files(s3_fs, dst)
    again = annotate_dataset(src, dst, config=config)
    assert again["counts"]["inputs"] == 0 and _files(s3_fs, dst) == before  # a re-run writes nothing

    s3_fs.pipe_file(f"{src}/sa_000003.tar", _sa1b_tar(_sa1b_members(8, 2)))
    third = annotate_dataset(src, dst, config=config)
    assert third["counts"]["inputs"] == 2  # the new shard alone
    assert _uris(s3_fs, dst, "images") == sorted(images + [f"{src}/sa_000003.tar#sa_8.jpg", f"{src}/sa_000003.tar#sa_9.jpg"])


@pytest.mark.slow
def test_manifest_and_parquet_with_bytes(root, s3_fs, s3_server, ray_cluster, prefect_server):
    files = f"{root}/loose"
    uris = []
    for n in range(3):
        s3_fs.pipe_file(f"{files}/img{n}.png", _png())
        uris.append(f"{files}/img{n}.png")
    missing = f"{files}/never-uploaded.png"
    # the last line repeats the first entry (same id)
    lines = "".join(json.dumps({"uri": u, "id": str(i)}) + "\n" for i, u in [*enumerate(uris + [missing]), (0, uris[0])])
    s3_fs.pipe_file(f"{root}/manifest/part-0.jsonl", lines.encode())
    dst = f"{root}/manifest-out"
    manifest = annotate_dataset(f"{root}/manifest", dst, config=_config(s3_server))
    assert _uris(s3_fs, dst, "images") == sorted(uris)  # listed twice, annotated once
    assert _error_types(s3_fs, dst) == {missing: "not_found"}
    assert manifest["counts"]["inputs"] == 4

    table = pa.table({"key": ["a", "b", "c"], "jpg": pa.array([_jpeg(), None, b"garbage"], pa.binary())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    s3_fs.pipe_file(f"{root}/pq/part-0.parquet", buffer.getvalue())
    dst = f"{root}/pq-out"
    annotate_dataset(f"{root}/pq", dst, config=_config(s3_server))
    part = f"{root}/pq/part-0.parquet"
    assert _uris(s3_fs, dst, "images") == [f"{part}#a"]
    assert set(_error_types(s3_fs, dst)) == {f"{part}#b", f"{part}#c"}
    plan = make_plan(f"{root}/pq", dst, load_config(overrides=[f"storage.endpoint_url={s3_server}"]), read_only=True)
    assert (plan.format, plan.new, plan.already_done) == ("parquet", 0, 3)
