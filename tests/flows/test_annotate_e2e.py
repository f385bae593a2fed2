"""annotate from s3:// to s3:// with real parts: moto's S3 server, a local Ray cluster, Prefect."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs

from samflow.config import StorageConfig, load_config
from samflow.flows.annotate import annotate_dataset
from samflow.scenes.sample import write_sample_dataset
from samflow.schemas import rle, tables
from tests.helpers.badinputs import write_bad_inputs, write_odd_good_images


def _upload(fs: s3fs.S3FileSystem, local: Path, remote: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{remote}/{path.relative_to(local).as_posix()}", path.read_bytes())


def _read(fs: s3fs.S3FileSystem, dst: str, table: str):
    fs.invalidate_cache()
    files = sorted(fs.glob(f"{dst}/{table}/*.parquet"))
    if not files:
        return None
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files])


def _all_files(fs: s3fs.S3FileSystem, dst: str) -> dict[str, int]:
    fs.invalidate_cache()
    return {p: fs.info(p)["size"] for p in fs.find(dst)}


@pytest.fixture(scope="module")
def bucket(s3_fs):
    name = f"s3://e2e-{uuid.uuid4().hex[:12]}"
    s3_fs.mkdir(name)
    return name


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory, bucket, s3_fs):
    local = tmp_path_factory.mktemp("mixed")
    write_sample_dataset(local / "scenes", n_synthetic=3, seed=1)
    good = write_odd_good_images(local / "odd")
    bad = write_bad_inputs(local / "bad")
    src = f"{bucket}/src"
    _upload(s3_fs, local, src)
    return {"src": src, "local": local, "bad": bad, "odd": good}


def _tiny_config(endpoint: str) -> dict:
    cfg = load_config(profile="tiny", overrides=[f"storage.endpoint_url={endpoint}", "output.shard_rows=4"])
    return cfg.model_dump(mode="json")


@pytest.fixture(scope="module")
def first_run(mixed_dataset, bucket, s3_server, ray_cluster, prefect_server):
    dst = f"{bucket}/out"
    manifest = annotate_dataset(mixed_dataset["src"], dst, config=_tiny_config(s3_server))
    return dst, manifest


def test_every_input_is_an_image_row_or_an_error_row(first_run, mixed_dataset, s3_fs):
    dst, manifest = first_run
    images = _read(s3_fs, dst, "images")
    errors = _read(s3_fs, dst, "errors")
    assert images.schema.equals(tables.IMAGES)
    assert errors.schema.equals(tables.ERRORS)
    listed = manifest["counts"]["inputs"]
    assert images.num_rows + errors.num_rows == listed
    uris = images.column("uri").to_pylist() + errors.column("uri").to_pylist()
    assert len(set(uris)) == len(uris) == listed
    assert manifest["counts"]["images"] == images.num_rows


def test_each_bad_input_is_an_error_row_with_a_clear_reason(first_run, mixed_dataset, s3_fs):
    dst, _ = first_run
    errors = {r["uri"].rsplit("/", 1)[-1]: r for r in _read(s3_fs, dst, "errors").to_pylist()}
    bad = mixed_dataset["bad"]
    assert len(bad) >= 10
    assert set(errors) == set(bad), "exactly the bad inputs fail"
    for name, expected_type in bad.items():
        row = errors[name]
        assert row["error_type"] == expected_type, (name, row)
        assert row["stage"] == "decode"
        assert len(row["message"]) > 10


def test_odd_but_valid_images_are_annotated(first_run, mixed_dataset, s3_fs):
    dst, _ = first_run
    names = {u.rsplit("/", 1)[-1] for u in _read(s3_fs, dst, "images").column("uri").to_pylist()}
    assert {Path(p).name for p in mixed_dataset["odd"]} <= names


def test_annotations_are_valid_rle_inside_their_image(first_run, s3_fs):
    dst, _ = first_run
    images = {r["item_id"]: r for r in _read(s3_fs, dst, "images").to_pylist()}
    annotations = _read(s3_fs, dst, "annotations")
    dim = _read(s3_fs, dst, "embeddings").schema.field("embedding").type.list_size
    assert annotations.schema.equals(tables.annotations_schema(dim))
    assert annotations.num_rows > 0
    ids = annotations.column("annotation_id").to_pylist()
    assert len(set(ids)) == len(ids)
    for row in annotations.to_pylist():
        image = images[row["item_id"]]
        mask = rle.decode(row["segmentation"])
        assert mask.shape == (image["height"], image["width"])
        assert int(mask.sum()) == row["area"] > 0
        assert rle.encode(mask)["counts"] == row["segmentation"]["counts"]
        x, y, w, h = row["bbox"]
        ys, xs = np.nonzero(mask)
        # COCO's convention (pycocotools' toBbox): x + w is one past the mask's last column.
        assert (x, y, x + w, y + h) == pytest.approx((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))


def test_embeddings_are_unit_vectors_one_per_image(first_run, s3_fs):
    dst, _ = first_run
    embeddings = _read(s3_fs, dst, "embeddings")
    images = _read(s3_fs, dst, "images")
    assert sorted(embeddings.column("item_id").to_pylist()) == sorted(images.column("item_id").to_pylist())
    vectors = np.asarray(embeddings.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_manifest_records_counts_models_and_timings(first_run, s3_fs):
    dst, manifest = first_run
    s3_fs.invalidate_cache()
    assert s3_fs.exists(f"{dst}/_runs/{manifest['run_id']}.json")
    assert manifest["models"]["segment"]["model"] == "tiny://sam"
    assert manifest["timings_s"]["stage_busy"]["segment"] > 0


def test_rerun_writes_nothing_and_new_items_are_processed_alone(
    first_run, mixed_dataset, s3_fs, s3_server
):
    dst, _ = first_run
    before = _all_files(s3_fs, dst)
    again = annotate_dataset(mixed_dataset["src"], dst, config=_tiny_config(s3_server))
    assert again["counts"]["inputs"] == 0
    assert _all_files(s3_fs, dst) == before

    extra = mixed_dataset["local"] / "extra"
    write_sample_dataset(extra, n_synthetic=1, seed=99, include_skimage=False)
    _upload(s3_fs, extra, f"{mixed_dataset['src']}/extra")
    added = annotate_dataset(mixed_dataset["src"], dst, config=_tiny_config(s3_server))
    assert added["counts"]["inputs"] == len([p for p in extra.rglob("*") if p.is_file() and "_gt" not in p.parts])
    images = _read(s3_fs, dst, "images")
    ids = images.column("item_id").to_pylist()
    assert len(ids) == len(set(ids))


def test_export_coco_from_s3_loads_in_pycocotools(first_run, s3_server, tmp_path, s3_fs):
    from pycocotools.coco import COCO

    from samflow.exporters.commands import export_coco

    dst, _ = first_run
    summary = export_coco(dst, tmp_path / "coco.json", StorageConfig(endpoint_url=s3_server))
    coco = COCO(str(tmp_path / "coco.json"))
    annotations = _read(s3_fs, dst, "annotations")
    assert summary["annotations"] == len(coco.getAnnIds()) == annotations.num_rows
    by_id = {r["annotation_id"]: r for r in annotations.to_pylist()}
    for ann in coco.loadAnns(coco.getAnnIds()[:20]):
        ours = by_id[ann["samflow_annotation_id"]]
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), rle.decode(ours["segmentation"]))
