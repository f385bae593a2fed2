"""Index builds across a Ray cluster: the quantizer and codebooks are trained once, ranges of
vectors are encoded by Ray tasks spread over two nodes (ray.cluster_utils.Cluster with an added
node) and merged; the index searches exactly as one encoded in a single process."""

from __future__ import annotations

from dataclasses import asdict

import faiss
import numpy as np
import pyarrow as pa
import pytest

from samflow.pipeline.index_parts import ray_parallel
from samflow.index.build import Build, BuildParams
from samflow.index.search import Searcher
from samflow.index.source import VectorBatch
from tests.helpers.index_data import clustered

DIM = 32


def _source(vectors: np.ndarray):
    ids = pa.array([f"item-{i}" for i in range(len(vectors))])
    meta = pa.table({"item_id": ids, "annotation_id": pa.nulls(len(vectors), pa.string()), "uri": ids})
    return [("file-0", lambda: iter([VectorBatch(vectors, meta)]))]


@pytest.fixture(scope="module")
def two_nodes(ray_cluster):
    node = ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    yield ray_cluster
    ray_cluster.remove_node(node)


@pytest.mark.parametrize("index_type", ["ivfpq", "flat"])
def test_a_two_node_encode_searches_as_a_one_process_one(two_nodes, tmp_path, index_type):
    vectors = clustered(24_000, DIM, seed=31, clusters=40)
    params = BuildParams(index=index_type, chunk_rows=2_000, nprobe=8, refine_factor=16)
    build = Build(tmp_path / "work", params, "image", "test")
    build.collect(_source(vectors))
    trained = build.train()  # once, on a sample: both encodings start from it
    one = build.add(faiss.clone_index(trained))
    assert "encode_nodes" not in build.state
    build.parallel = ray_parallel(4)
    two = build.add(faiss.clone_index(trained))
    assert build.state["encode_nodes"] == 2  # ranges were encoded on both nodes
    assert one.ntotal == two.ntotal == len(vectors)
    manifest = {"type": build.state["type"], "dim": DIM, "params": asdict(params)}
    queries = clustered(50, DIM, seed=31, clusters=40)[:50] + 0.01
    searched = [Searcher(tmp_path / "work", manifest, index=index).search(queries, 10) for index in (one, two)]
    np.testing.assert_array_equal(searched[0][1], searched[1][1])
    np.testing.assert_allclose(searched[0][0], searched[1][0], atol=1e-6)
    # The same codes in the same lists, in the same order: the very index one process builds.
    assert faiss.serialize_index(one).tobytes() == faiss.serialize_index(two).tobytes()


def test_training_gives_the_same_index_whatever_the_thread_count_and_follows_the_seed(tmp_path):
    """A build trains in the driver with FAISS's OpenMP threads, which differ between machines
    and processes (a Ray driver, a laptop): the trained index must not."""
    vectors = clustered(20_000, DIM, seed=33, clusters=40)
    threads = faiss.omp_get_max_threads()

    def trained(name: str, omp_threads: int, seed: int = 0) -> bytes:
        faiss.omp_set_num_threads(omp_threads)
        build = Build(tmp_path / name, BuildParams(index="ivfpq", seed=seed), "image", "test")
        build.collect(_source(vectors))
        return faiss.serialize_index(build.train()).tobytes()

    try:
        one = trained("one", 1)
        assert trained("four", 4) == one
        assert trained("seeded", 1, seed=7) != one  # the seed is the one input that changes it
    finally:
        faiss.omp_set_num_threads(threads)


def test_index_build_with_ray_tasks_from_the_command_line(two_nodes, tmp_path, monkeypatch):
    """``samflow index build DST --ray-tasks N`` joins the cluster (RAY_ADDRESS), encodes on both
    nodes, and answers exactly as the build of one process: two processes train the same index."""
    import json

    from samflow.index.commands import OpenIndex
    from tests.helpers.cli_process import samflow
    from tests.helpers.index_data import write_image_shard

    vectors = clustered(20_000, DIM, seed=32, clusters=40)
    dsts = [str(tmp_path / "one"), str(tmp_path / "two")]
    for dst in dsts:
        write_image_shard(dst, "a", vectors[:10_000], first=0)
        write_image_shard(dst, "b", vectors[10_000:], first=10_000)
    monkeypatch.setenv("RAY_ADDRESS", two_nodes.address)
    one = json.loads(samflow("index", "build", dsts[0], "--index", "ivfpq", cwd=tmp_path).stdout)
    two = json.loads(samflow("index", "build", dsts[1], "--index", "ivfpq", "--ray-tasks", "4", cwd=tmp_path).stdout)
    assert "encode_nodes" not in one and two["encode_nodes"] == 2
    assert two["count"] == one["count"] == 20_000 and two["recall_at_10"] >= 0.9
    # Two builds of the same data train the same quantizer and codebooks: the same answers.
    params = ("nlist", "pq_m", "nprobe", "refine_factor")
    assert {k: two["params"][k] for k in params} == {k: one["params"][k] for k in params}
    queries = vectors[::500] + 0.01
    found = [OpenIndex(dst).searcher.search(queries, 10) for dst in dsts]
    np.testing.assert_array_equal(found[0][1], found[1][1])
    np.testing.assert_allclose(found[0][0], found[1][0], atol=1e-6)
