"""Index segments: ``index add`` writes a new segment and leaves the published ones alone (on S3:
only the new segment's objects and the manifest are uploaded, counted at the HTTP level); search
across segments answers as one index of every vector; compaction (asked, or past
``max_segments``) merges them; an index published before segments still loads and grows; the
user path through ``samflow index ...`` as a subprocess."""

from __future__ import annotations

import json
import posixpath

import numpy as np
import pytest

from samflow.config import StorageConfig
from samflow.index.build import BuildParams
from samflow.index.commands import OpenIndex
from samflow.index.updates import add_to_index, build_index, compact_index
from tests.helpers.cli_process import run_module, samflow
from tests.helpers.index_data import clustered, write_image_shard
from tests.helpers.s3_proxy import FaultProxy, Faults

DIM = 32


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Downloaded segments land in this test's folder, so each test fetches what it needs."""
    monkeypatch.setenv("SAMFLOW_CACHE", str(tmp_path / "cache"))


def _segment_dirs(root) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("b-")}


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def _near(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries near stored vectors (each one nudged off a random row)."""
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(len(vectors), n, replace=False)] + 0.05 * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def test_ivfpq_segments_search_as_one_index_and_compaction_merges_them(tmp_path):
    dst = str(tmp_path / "run")
    root = tmp_path / "run/_index/image"
    vectors = clustered(15_000, DIM, seed=21, clusters=30)
    write_image_shard(dst, "a", vectors[:12_000], first=0)
    first = build_index(dst, "image", BuildParams(index="ivfpq"))
    published = {p: p.stat().st_mtime_ns for p in (root / first["build_id"]).iterdir()}
    write_image_shard(dst, "b", vectors[12_000:13_500], first=12_000)
    write_image_shard(dst, "c", vectors[13_500:], first=13_500)
    second = add_to_index(dst, "image")
    assert second["added"] == 3_000 and len(second["segments"]) == 2
    assert second["segments"][1]["start"] == 12_000 and second["segments"][1]["count"] == 3_000
    assert second["trained_count"] == 12_000  # not retrained
    # The published segment is left as it was: same files, not rewritten.
    assert {p: p.stat().st_mtime_ns for p in (root / first["build_id"]).iterdir()} == published
    new = root / second["segments"][1]["id"]
    assert (new / "vectors.f32").stat().st_size == 3_000 * DIM * 4

    queries = _near(vectors, 40, seed=22)
    segmented = OpenIndex(dst).searcher.search(queries, 10)
    merged = compact_index(dst, "image")
    assert merged["compacted"] == 2 and len(merged["segments"]) == 1 and merged["count"] == 15_000
    assert merged["trained_count"] == 12_000 and merged["params"]["nlist"] == first["params"]["nlist"]
    assert _segment_dirs(root) == {merged["build_id"]}
    one = OpenIndex(dst).searcher.search(queries, 10)
    # Same trained quantizer and codes: the segments answer as the one merged index does.
    np.testing.assert_array_equal(segmented[1], one[1])
    np.testing.assert_allclose(segmented[0], one[0], atol=1e-6)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(one[1].tolist(), _exact(vectors, queries, 10).tolist())])
    assert recall >= 0.95
    assert compact_index(dst, "image")["compacted"] == 0  # one segment: nothing to merge


def test_flat_segments_give_exact_results_and_compact_past_max_segments(tmp_path):
    dst = str(tmp_path / "run")
    vectors = clustered(900, DIM, seed=23)
    write_image_shard(dst, "a", vectors[:300], first=0)
    build_index(dst, "image")
    for number, start in enumerate((300, 600)):
        write_image_shard(dst, f"s{number}", vectors[start:start + 300], first=start)
        manifest = add_to_index(dst, "image", max_segments=3)
    assert len(manifest["segments"]) == 3 and manifest["count"] == 900
    queries = clustered(10, DIM, seed=24)
    _, ids = OpenIndex(dst).searcher.search(queries, 10)
    np.testing.assert_array_equal(ids, _exact(vectors, queries, 10))
    hit = OpenIndex(dst).query(vectors[750][None], k=1)[0]
    assert hit["id"] == 750 and hit["item_id"] == "item-0000750"
    extra = clustered(50, DIM, seed=25)
    write_image_shard(dst, "s2", extra, first=900)
    compacted = add_to_index(dst, "image", max_segments=3)  # a 4th segment: over the limit
    assert len(compacted["segments"]) == 1 and compacted["count"] == 950 and compacted["added"] == 50
    _, ids = OpenIndex(dst).searcher.search(queries, 10)
    np.testing.assert_array_equal(ids, _exact(np.concatenate([vectors, extra]), queries, 10))


def test_an_index_published_before_segments_loads_and_grows(tmp_path):
    """A manifest without ``segments`` and a build folder without ``trained.faiss`` (what builds
    wrote before): read as one segment; ``index add`` starts its segment from that index, emptied."""
    dst = str(tmp_path / "run")
    root = tmp_path / "run/_index/image"
    vectors = clustered(13_000, DIM, seed=26, clusters=30)
    write_image_shard(dst, "a", vectors[:12_000], first=0)
    built = build_index(dst, "image", BuildParams(index="ivfpq"))
    (root / built["build_id"] / "trained.faiss").unlink()
    old = json.loads((root / "manifest.json").read_text())
    del old["segments"]
    (root / "manifest.json").write_text(json.dumps(old))
    assert 5 in [h["id"] for h in OpenIndex(dst).query(vectors[5][None], k=10)]
    write_image_shard(dst, "b", vectors[12_000:], first=12_000)
    grown = add_to_index(dst, "image")
    assert [s["id"] for s in grown["segments"]][0] == built["build_id"] and grown["count"] == 13_000
    index = OpenIndex(dst)
    for row in (5, 12_345):  # k=10: more PQ candidates re-ranked, so a stored vector finds itself
        hits = index.query(vectors[row][None], k=10)
        assert hits[0]["id"] == row and hits[0]["item_id"] == f"item-{row:07d}"


def _index_objects(s3_fs, root: str) -> dict[str, int]:
    return {path: info["size"] for path, info in s3_fs.find(root, detail=True).items()}


def test_index_add_on_s3_uploads_only_the_new_segment_and_the_manifest(s3_server, s3_bucket):
    import s3fs

    dst = f"{s3_bucket}/segments"
    vectors = clustered(14_000, DIM, seed=27, clusters=30)
    write_image_shard(dst, "a", vectors[:12_000], first=0)
    first = build_index(dst, "image", BuildParams(index="ivfpq"), storage=StorageConfig())
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    root = f"{dst.removeprefix('s3://')}/_index/image"
    before = _index_objects(fs, root)
    write_image_shard(dst, "b", vectors[12_000:], first=12_000)
    with FaultProxy(s3_server, Faults()) as proxy:
        added = add_to_index(dst, "image", storage=StorageConfig(endpoint_url=proxy.url))
    segment = added["segments"][-1]["id"]
    uploaded = proxy.faults.uploaded()
    index_uploads = {path.removeprefix("/"): size for path, size in uploaded.items() if "/_index/" in path}
    # Only the new segment's files and the manifest were written; nothing published before.
    assert {posixpath.dirname(p) for p in index_uploads} == {root, f"{root}/{segment}"}
    assert {posixpath.basename(p) for p in index_uploads if segment in p} == {"index.faiss", "vectors.f32", "ids.parquet"}
    assert index_uploads[f"{root}/{segment}/vectors.f32"] >= 2_000 * DIM * 4
    assert sum(index_uploads.values()) < before[f"{root}/{first['build_id']}/vectors.f32"]
    after = _index_objects(fs, root)
    assert {p: s for p, s in after.items() if p in before and not p.endswith("manifest.json")} == {
        p: s for p, s in before.items() if not p.endswith("manifest.json")}
    assert after[f"{root}/{segment}/vectors.f32"] == 2_000 * DIM * 4
    hit = OpenIndex(dst, storage=StorageConfig()).query(vectors[13_000][None], k=10)[0]
    assert hit["id"] == 13_000 and hit["item_id"] == "item-0013000"


def test_the_index_commands_as_a_user_runs_them_on_s3(s3_bucket, tmp_path):
    dst = f"{s3_bucket}/cli"
    vectors = clustered(600, DIM, seed=28)
    write_image_shard(dst, "a", vectors[:300], first=0)
    built = json.loads(samflow("index", "build", dst, cwd=tmp_path).stdout)
    assert built["count"] == 300 and len(built["segments"]) == 1
    for number, start in enumerate((300, 450)):
        write_image_shard(dst, f"n{number}", vectors[start:start + 150], first=start)
        added = json.loads(samflow("index", "add", dst, cwd=tmp_path).stdout)
        assert added["added"] == 150
    assert [s["count"] for s in added["segments"]] == [300, 150, 150]
    compacted = json.loads(samflow("index", "compact", dst, cwd=tmp_path).stdout)
    assert compacted["compacted"] == 3 and compacted["segments"] == [
        {**compacted["segments"][0], "start": 0, "count": 600}]
    hit = OpenIndex(dst, storage=StorageConfig()).query(vectors[500][None], k=1)[0]
    assert hit["id"] == 500

    mistakes = [(("index", "compact", f"{s3_bucket}/nothing"), "no image index under"),
                (("index", "add", dst, "--max-segments", "0"), "--max-segments must be at least 1")]
    for args, message in mistakes:
        done = run_module("samflow.cli.main", *args, cwd=tmp_path)
        err = done.stderr.strip()
        assert done.returncode == 2 and message in err and "\n" not in err, (done.returncode, err)


def test_an_add_past_the_drift_factor_retrains_into_one_segment_without_uploading_a_segment_first(tmp_path):
    from samflow.index.updates import DRIFT_FACTOR

    dst = str(tmp_path / "run")
    root = tmp_path / "run/_index/image"
    vectors = clustered(10_000 * (DRIFT_FACTOR + 1), DIM, seed=29, clusters=30)
    write_image_shard(dst, "a", vectors[:10_000], first=0)
    build_index(dst, "image", BuildParams(index="ivfpq"))
    write_image_shard(dst, "b", vectors[10_000:], first=10_000)
    retrained = add_to_index(dst, "image")
    assert retrained["trained_count"] == retrained["count"] == len(vectors) and retrained["added"] == len(vectors) - 10_000
    assert len(retrained["segments"]) == 1 and _segment_dirs(root) == {retrained["build_id"]}
    assert retrained["recall_at_10"] >= 0.9
    query = vectors[45_000]
    hits = OpenIndex(dst).query(query[None], k=5)
    # Ids and id-map rows still name the right vectors after the rebuild (scores are exact).
    assert [h["score"] for h in hits] == pytest.approx([float(vectors[h["id"]] @ query) for h in hits], abs=1e-5)
    assert all(h["item_id"] == f"item-{h['id']:07d}" for h in hits)
