"""Multi-node runs on the session's Ray cluster: two worker nodes that each declare one logical
GPU join the CPU-only head. GPU stages must run only where GPUs are declared, and losing a node
in the middle of a run must still end with every input accounted for exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from samflow.flows.annotate import annotate_dataset
from samflow.pipeline.graph import run_pipeline
from tests.helpers.accounting import (
    NOT_AN_IMAGE,
    POISON_NAME,
    WhenBusy,
    assert_exactly_once,
    plan_items,
    tiny_config,
    write_dataset,
)

GPU_STAGES = ["stages.segment.num_gpus=0.5", "stages.embed.num_gpus=0.5"]


@pytest.fixture(scope="module")
def gpu_nodes(ray_cluster):
    """Two worker nodes with 2 CPUs and 1 logical GPU each; removed again after the module."""
    nodes = [ray_cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    ray_cluster.wait_for_nodes()
    yield nodes
    for node in nodes:
        if node in ray_cluster.worker_nodes:
            ray_cluster.remove_node(node)
    ray_cluster.wait_for_nodes()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("multinode-src"), n_images=32, seed=11)


def _inputs(src: str) -> list[str]:
    return sorted(str(p) for p in Path(src).iterdir() if p.is_file())


@pytest.mark.slow
def test_gpu_stages_run_only_on_gpu_nodes_and_the_manifest_says_where(
    gpu_nodes, ray_cluster, dataset, prefect_server, tmp_path
):
    dst = str(tmp_path / "out")
    cfg = tiny_config(*GPU_STAGES)
    manifest = annotate_dataset(dataset["src"], dst, config=cfg.model_dump(mode="json"))

    assert_exactly_once(dst, _inputs(dataset["src"]))
    counts = manifest["counts"]
    assert counts["images"] + counts["errors"] == counts["inputs"] == dataset["inputs"]
    gpu_node_ids = {node.node_id for node in gpu_nodes}
    written = json.loads(Path(manifest["path"]).read_text())
    assert written["placement"] == manifest["placement"]
    for stage in ("segment", "embed"):
        placement = manifest["placement"][stage]
        assert placement and set(placement) <= gpu_node_ids, (stage, placement)
        assert ray_cluster.head_node.node_id not in placement
        assert sum(node["rows"] for node in placement.values()) >= dataset["inputs"] - 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_losing_the_node_of_the_busy_segment_actor_still_completes_the_run(
    gpu_nodes, ray_cluster, dataset, tmp_path
):
    cfg = tiny_config("stages.segment.num_gpus=0.5")
    items = plan_items(dataset["src"], cfg)
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in gpu_nodes}
    lost: list = []

    def remove_node_of(process: psutil.Process) -> None:
        parents = {parent.pid for parent in process.parents()}
        node = next(node for raylet, node in raylets.items() if raylet in parents)
        ray_cluster.remove_node(node)
        lost.append(node)

    dst = str(tmp_path / "out")
    with WhenBusy(list(raylets), "MapBatches(SegmentStage)", remove_node_of, delay_s=0.0) as watch:
        stats = run_pipeline(items, cfg, dst, "node-loss-run")

    assert watch.hit is not None and lost, "the segment actor was never seen at work"
    tables = assert_exactly_once(dst, [item["uri"] for item in items])
    assert stats.rows["images"] + stats.rows["errors"] == len(items)
    assert {Path(r["uri"]).name for r in tables["errors"]} == {POISON_NAME, NOT_AN_IMAGE}
    survivor = next(node for node in gpu_nodes if node is not lost[0])
    segment_nodes = set(stats.placement["segment"])
    assert survivor.node_id in segment_nodes, "no segment batch ran after the node was lost"
    assert segment_nodes <= {node.node_id for node in gpu_nodes}
