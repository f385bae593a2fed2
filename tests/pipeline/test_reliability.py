"""Fault tolerance and exactly-once output: poisoned batches, unbuildable rows, half-written
commits, an actor killed mid-run, and a whole run SIGKILLed (a second run on its DST refusing
while it lives) and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pytest

from samflow.actors.embed import EmbedConfig, EmbedStage
from samflow.actors.segment import SegmentConfig, SegmentStage
from samflow.config import StorageConfig
from samflow.media.decode import DecodeStage
from samflow.pipeline.graph import run_pipeline
from samflow.pipeline.writer import stage_shard
from samflow.schemas import masks as mask_column
from samflow.schemas.ids import item_id
from samflow.store.catalog import COMMITS, Catalog, ShardResult
from samflow.store.storage import StorageSource
from tests.helpers.accounting import (
    NOT_AN_IMAGE,
    POISON_NAME,
    WhenBusy,
    assert_exactly_once,
    plan_items,
    sigkill,
    tiny_config,
    write_dataset,
)
from tests.helpers.stages import context

REPO = Path(__file__).resolve().parents[2]


def _decoded(paths: list[Path]) -> dict[str, np.ndarray]:
    cfg = tiny_config()
    items = {"uri": np.array([str(p) for p in paths], dtype=object),
             "size": np.array([p.stat().st_size for p in paths])}
    return DecodeStage(StorageSource(cfg.storage), cfg.input)(items)


def _select(batch: dict[str, np.ndarray], rows: list[int]) -> dict[str, np.ndarray]:
    return {name: np.asarray(column)[rows] for name, column in batch.items()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("reliab-src"), n_images=20, seed=5)


@pytest.fixture(scope="module")
def segment_stage():
    return SegmentStage(SegmentConfig(model="tiny://sam"), context({"engine": tiny_config().engine.model_dump()}))


def test_a_poisoned_image_fails_alone_and_its_batch_mates_keep_their_masks(dataset, segment_stage):
    src = Path(dataset["src"])
    scenes = sorted(src.glob("scene_*"))[:2]
    paths = [scenes[0], src / POISON_NAME, scenes[1]]
    batch = segment_stage(_decoded(paths))

    assert list(batch["error_stage"]) == ["", "segment", ""]
    assert "size" in batch["error_message"][1].lower()
    assert mask_column.records_at(batch["masks"], 1) == []
    for row in (0, 2):
        alone = segment_stage(_decoded([paths[row]]))
        assert alone["error_type"][0] == ""
        in_batch, by_itself = (mask_column.records_at(b["masks"], i) for b, i in ((batch, row), (alone, 0)))
        assert in_batch, "a healthy image lost its masks"
        # Same masks as when the image runs alone (scores may differ in the last float bits).
        assert [m["segmentation"] for m in in_batch] == [m["segmentation"] for m in by_itself]
        assert [m["predicted_iou"] for m in in_batch] == pytest.approx([m["predicted_iou"] for m in by_itself], abs=1e-5)

    embedded = EmbedStage(EmbedConfig(model="tiny://clip"))(batch)
    norms = np.linalg.norm(embedded["embedding"], axis=1)
    np.testing.assert_allclose(norms[[0, 2]], 1.0, atol=1e-4)
    assert norms[1] == 0.0 and embedded["error_stage"][1] == "segment"


def test_a_row_the_writer_cannot_build_becomes_a_write_error(dataset, segment_stage, tmp_path):
    src = Path(dataset["src"])
    scenes = sorted(src.glob("scene_*"))[:3]
    batch = segment_stage(_decoded(scenes))
    # A stage emitted masks whose area is text, and row 1's is not even a number: the writer
    # cannot cast that row to the annotations schema.
    records = [mask_column.records_at(batch["masks"], r) for r in range(3)]
    for mask in (m for row in records for m in row):
        mask["area"] = str(mask["area"])
    assert records[1], "the scene should have masks"
    records[1][0]["area"] = "not a number"
    loose = pa.struct([pa.field("area", pa.string()) if f.name == "area" else f for f in mask_column.MASK])
    batch["masks"] = pa.array(records, type=pa.list_(loose))
    dst = str(tmp_path / "out")

    out = stage_shard(batch, dst=dst, storage=StorageConfig(), run_id="r1", embed_model=None)
    result = ShardResult.from_row({name: column[0].as_py() for name, column in out.items()})
    Catalog(dst, StorageConfig()).commit("r1", result)

    tables = assert_exactly_once(dst, [str(p) for p in scenes], embedded=False)
    assert [r["uri"] for r in tables["errors"]] == [str(scenes[1])]
    assert tables["errors"][0]["stage"] == "write"
    assert len(tables["images"]) == 2 and tables["annotations"]


def test_a_half_written_marker_is_not_a_commit_and_commit_can_be_repeated(tmp_path):
    dst = str(tmp_path / "out")
    catalog = Catalog(dst, StorageConfig())
    for shard in ("good", "torn"):
        catalog.put_staged("r1", "errors", shard, b"parquet bytes")
        catalog.commit("r1", ShardResult(shard, [f"/in/{shard}.png"], {"errors": 1}))
    catalog.commit("r1", ShardResult("good", ["/in/good.png"], {"errors": 1}))  # a repeated commit
    marker = Path(catalog.path(COMMITS, "torn.json"))
    marker.write_text(marker.read_text()[:20])  # what a kill mid-write leaves without the rename
    (marker.parent / ".good.json.0123.tmp").write_text("{")

    shards = catalog.committed_shards()
    assert set(shards) == {"good"}
    assert catalog.done_uris(shards) == {"/in/good.png"}
    removed = catalog.remove_uncommitted(shards)
    assert [Path(p).name for p in removed] == ["torn.parquet"]
    assert sorted(p.name for p in marker.parent.iterdir() if p.is_file()) == ["good.json", "torn.json"]


@pytest.mark.slow
def test_a_killed_segment_actor_is_restarted_and_the_run_loses_nothing(dataset, ray_cluster, tmp_path):
    cfg = tiny_config()
    items = plan_items(dataset["src"], cfg)
    raylet = ray_cluster.head_node.all_processes["raylet"][0].process.pid
    dst = str(tmp_path / "out")
    segment_pids: list[int] = []  # worker pid of each segment batch, in commit order

    def record(result: ShardResult, meta: dict) -> None:
        segment_pids.extend(batch["pid"] for batch in meta.get("segment", []))

    with WhenBusy([raylet], "MapBatches(SegmentStage)", sigkill, delay_s=0.0) as killer:
        stats = run_pipeline(items, cfg, dst, "kill-run", on_commit=record)

    assert killer.hit is not None, "the segment actor was never seen at work"
    tables = assert_exactly_once(dst, [i["uri"] for i in items])
    assert stats.rows["images"] + stats.rows["errors"] == len(items)
    errors = {Path(r["uri"]).name: r["stage"] for r in tables["errors"]}
    assert errors == {POISON_NAME: "segment", NOT_AN_IMAGE: "decode"}
    assert set(segment_pids) - {killer.hit}, "no restarted actor did any work"


def _annotate_process(src: str, dst: str, ray_tmp: str) -> subprocess.Popen:
    """``samflow annotate`` in its own process group, with a Ray of its own (never this
    session's cluster) and this session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_TMPDIR=ray_tmp, PREFECT_API_URL=PREFECT_API_URL.value())
    env.pop("RAY_ADDRESS", None)
    settings = ["output.shard_rows=2", "stages.segment.batch_size=1"]
    command = [sys.executable, "-m", "samflow.cli.main", "annotate", src, "--out", dst, "--profile", "tiny",
               *(arg for setting in settings for arg in ("--set", setting))]
    return subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _processes_under(folder: str) -> list[psutil.Process]:
    """Processes whose command line names ``folder`` (the Ray session of one annotate run)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(folder in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.fixture(scope="module")
def larger_dataset(tmp_path_factory):
    """Enough images that Ray Data streams them in several blocks: the first shards commit
    seconds before the last ones, so a kill at the first marker lands mid-run."""
    return write_dataset(tmp_path_factory.mktemp("reliab-resume-src"), n_images=60, seed=6)


@pytest.mark.slow
def test_a_run_killed_after_its_first_commit_resumes_without_duplicates(larger_dataset, prefect_server, tmp_path):
    dataset = larger_dataset
    dst = str(tmp_path / "out")
    commits = tmp_path / "out" / COMMITS
    ray_tmp = tempfile.mkdtemp(prefix="sfr", dir="/tmp")
    first = _annotate_process(dataset["src"], dst, ray_tmp)
    # Two runs on one DST: while the first holds DST's lease a second one refuses, writing nothing.
    lease = tmp_path / "out" / "_lease.json"
    deadline = time.monotonic() + 120
    while not lease.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    rival = subprocess.run([sys.executable, "-m", "samflow.cli.main", "annotate", dataset["src"], "--out", dst,
                            "--profile", "tiny"], env=dict(os.environ, PYTHONPATH=str(REPO)),
                           capture_output=True, text=True, timeout=120)
    assert rival.returncode == 2 and "in use by another run" in rival.stderr, rival.stderr[-2000:]
    assert len(rival.stderr.strip().splitlines()) == 1 and first.poll() is None
    deadline = time.monotonic() + 300
    while not list(commits.glob("*.json")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # the CLI leads its group: Ray's processes go with it
    output = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL, f"the first run ended on its own:\n{output[-3000:]}"
    # Ray processes outside the group (a worker re-parented when its raylet died) exit once they
    # see their raylet gone; give them that moment, then nothing of the run may remain.
    _, alive = psutil.wait_procs(_processes_under(ray_tmp), timeout=15)
    assert alive == [], f"a process of the killed run survived: {[p.cmdline()[:3] for p in alive]}"

    catalog = Catalog(dst, StorageConfig())
    committed_before = catalog.done_uris(catalog.committed_shards())
    assert 0 < len(committed_before) < dataset["inputs"], f"the kill did not land mid-run: {len(committed_before)}"
    assert not list((tmp_path / "out").glob("_runs/*.json"))

    second = _annotate_process(dataset["src"], dst, tempfile.mkdtemp(prefix="sfr", dir="/tmp"))
    output = second.communicate(timeout=400)[0]
    assert second.returncode == 0, output[-3000:]
    summary = json.loads(output[output.rindex('{\n "run_id"'):])
    assert summary["counts"]["already_done"] == len(committed_before)
    assert summary["counts"]["inputs"] == dataset["inputs"] - len(committed_before)
    inputs = sorted(str(p) for p in Path(dataset["src"]).iterdir() if p.is_file())
    tables = assert_exactly_once(dst, inputs)
    assert {Path(r["uri"]).name for r in tables["errors"]} == {POISON_NAME, NOT_AN_IMAGE}


def _as_video_frames(batch: dict[str, np.ndarray], uri: str, first_frame: int) -> dict[str, np.ndarray]:
    """Decoded rows relabelled as consecutive sampled frames of one video (PyAV is optional and
    absent here; the writer only sees rows, and these are the rows a video decodes to)."""
    frames = dict(batch)
    n = len(batch["uri"])
    frames["uri"] = np.array([uri] * n, dtype=object)
    frames["frame_index"] = np.arange(first_frame, first_frame + n, dtype=np.int32)
    frames["timestamp_s"] = frames["frame_index"] * 0.5
    frames["item_id"] = np.array([item_id(uri, int(i)) for i in frames["frame_index"]], dtype=object)
    return frames


def test_frames_of_one_video_in_two_shards_commit_together_or_not_at_all(dataset, tmp_path):
    scenes = sorted(Path(dataset["src"]).glob("scene_*"))[:4]
    decoded = _decoded(scenes)
    video = str(tmp_path / "clip.mp4")
    dst = str(tmp_path / "out")
    results = []
    for rows, first_frame in (([0, 1], 0), ([2, 3], 2)):
        out = stage_shard(_as_video_frames(_select(decoded, rows), video, first_frame),
                          dst=dst, storage=StorageConfig(), run_id="r1", embed_model=None)
        assert out["frames"][0].as_py() == [video]
        results.append(ShardResult.from_row({name: column[0].as_py() for name, column in out.items()}))
    assert results[0].shard != results[1].shard, "two shards of one video share a name"

    catalog = Catalog(dst, StorageConfig())
    group = catalog.commit_group("r1", results)
    markers = catalog.committed_shards()
    assert list(markers) == [group] and catalog.shard_names(markers) == {r.shard for r in results}
    assert catalog.remove_uncommitted(markers) == []
    frames = sorted(catalog.read_table("images").column("frame_index").to_pylist())
    assert frames == [0, 1, 2, 3]

    # The cleanup dropped the group's intent (it is committed); a retried commit records it again.
    assert catalog.commit_group("r1", results) == group
    marker = Path(catalog.path(COMMITS, f"{group}.json"))
    marker.write_text(marker.read_text()[:30])  # a torn group marker commits none of its shards
    removed = catalog.remove_uncommitted(catalog.committed_shards())
    # Each shard's staged table files and its done-set file: every one removed, nothing else.
    assert {Path(p).stem for p in removed} == {r.shard for r in results}
    assert catalog.read_table("images") is None
