"""The plan against an output's commit history, on the real S3 server: `samflow plan` (a dry run)
writes nothing to DST, and what a plan asks of storage is counted through a proxy in front of the
server (tests/helpers/s3_proxy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli_process import samflow
from tests.helpers.history import commit_shards
from tests.helpers.s3_proxy import FaultProxy, Faults

WRITES = ("PUT", "POST", "DELETE")


def _objects(s3_fs, prefix: str) -> dict[str, str]:
    s3_fs.invalidate_cache()
    return {path: info["ETag"] for path, info in s3_fs.find(prefix, detail=True).items()}


def _loose_source(s3_fs, src: str, count: int) -> list[str]:
    uris = [f"{src}/img{n:03d}.png" for n in range(count)]
    for uri in uris:
        s3_fs.pipe_file(uri, b"png bytes: the plan lists, it never reads them")
    return uris


@pytest.mark.slow
def test_samflow_plan_writes_nothing_to_dst(s3_server, s3_bucket, s3_fs, tmp_path: Path):
    src, dst = f"{s3_bucket}/dry/src", f"{s3_bucket}/dry/out"
    uris = _loose_source(s3_fs, src, 8)
    commit_shards(dst, _storage(s3_server), {"old0": uris[:2], "old1": uris[2:3]}, compacted=True)
    commit_shards(dst, _storage(s3_server), {"new0": uris[3:5], "new1": uris[5:6]}, compacted=False)
    before = _objects(s3_fs, dst)
    with FaultProxy(s3_server, Faults()) as proxy:
        done = samflow("plan", src, "--out", dst, "--set", f"storage.endpoint_url={proxy.url}", cwd=tmp_path)
    plan = json.loads(done.stdout.strip().splitlines()[-1])
    assert (plan["format"], plan["new"], plan["done"]) == ("files", 2, 6)
    assert _objects(s3_fs, dst) == before  # not one object added, changed or removed
    assert not any(proxy.faults.kinds[kind] for kind in WRITES), dict(proxy.faults.kinds)


def _storage(endpoint: str):
    from samflow.config import StorageConfig

    return StorageConfig(endpoint_url=endpoint)


def _history(count: int, prefix: str = "s") -> dict[str, list[str]]:
    return {f"{prefix}{n:06d}": [f"s3://elsewhere/{prefix}/{n:06d}.jpg"] for n in range(count)}


def _state(catalog) -> tuple[dict, set]:
    return catalog.committed_shards(), catalog.committed_names()


def test_checkpoints_keep_the_history_in_every_state_a_kill_can_leave(s3_server, s3_bucket):
    from samflow.store import checkpoint
    from samflow.store.catalog import Catalog

    dst = f"{s3_bucket}/ckpt/out"
    storage = _storage(s3_server)
    catalog = Catalog(dst, storage)
    commit_shards(dst, storage, _history(30), compacted=True)
    catalog.commit_group("run", [])  # a group marker (videos): its shards list is part of history
    expected = _state(catalog)
    commits = catalog.path("_commits")

    # Cut after the checkpoint is written, before any marker is deleted: both hold the markers.
    markers = catalog.committed_shards(catalog._markers())
    checkpoint.write_checkpoint(catalog.fs, commits, 1, checkpoint.to_rows(markers))
    assert _state(catalog) == expected
    # Cut halfway through the deletes.
    catalog.fs.rm(catalog._markers()[:10])
    assert _state(catalog) == expected
    # Compaction run again: one checkpoint, no markers, the same history.
    assert catalog.checkpoint() == 21
    assert _state(catalog) == expected and catalog._markers() == []
    assert [seq for seq, _ in checkpoint.checkpoints(catalog.fs, commits)] == [2]
    # A marker looked up by name (a review import's once-only check) is found in the checkpoint.
    assert catalog.is_committed("s000007") and not catalog.is_committed("s999999")

    # New commits after it, then a cut before the older checkpoint is deleted.
    commit_shards(dst, storage, _history(5, prefix="t"), compacted=True)
    expected = _state(catalog)
    assert len(expected[1]) == 35 and len(expected[0]) == 36
    rows = checkpoint.merged(checkpoint.read_history(catalog.fs, commits, list, full=True)[2],
                             checkpoint.to_rows(catalog.committed_shards(catalog._markers())))
    checkpoint.write_checkpoint(catalog.fs, commits, 3, rows)
    assert _state(catalog) == expected
    assert catalog.checkpoint(min_markers=6) == 0  # under the threshold: left as it is
    assert catalog.checkpoint() == 5
    assert _state(catalog) == expected
    assert [seq for seq, _ in checkpoint.checkpoints(catalog.fs, commits)] == [4]


_COMPACT = """
import sys
from samflow.config import StorageConfig
from samflow.store.catalog import Catalog
Catalog(sys.argv[1], StorageConfig(endpoint_url=sys.argv[2])).checkpoint()
"""


@pytest.mark.slow
def test_a_compaction_killed_midway_then_run_again_keeps_exactly_the_history(s3_server, s3_bucket, s3_fs):
    import os
    import signal
    import subprocess
    import sys
    import time

    from samflow.store import checkpoint
    from samflow.store.catalog import Catalog
    from tests.helpers.cli_process import ROOT

    dst = f"{s3_bucket}/killed/out"
    storage = _storage(s3_server)
    catalog = Catalog(dst, storage)
    # Over 1000 markers: the compaction lists them in two LIST pages and deletes them in two batches.
    commit_shards(dst, storage, _history(1100), compacted=True)
    expected = _state(catalog)
    child = subprocess.Popen([sys.executable, "-c", _COMPACT, dst, s3_server], env={**os.environ, "PYTHONPATH": str(ROOT)})
    written = checkpoint.checkpoint_path(catalog.path("_commits"), 1)
    deadline = time.monotonic() + 120
    while not s3_fs.exists(written) and child.poll() is None and time.monotonic() < deadline:
        s3_fs.invalidate_cache()
        time.sleep(0.02)  # the S3 server runs in this process: polling flat out would starve the child's requests
    child.send_signal(signal.SIGKILL)  # right after the checkpoint is written: mid-deletes, or just after
    child.wait()
    assert _state(catalog) == expected
    left = len(catalog._markers())
    assert catalog.checkpoint() == left
    assert _state(catalog) == expected and catalog._markers() == []


def _plan_requests(src: str, dst: str, endpoint: str) -> tuple[dict, dict]:
    from samflow.config import load_config
    from samflow.flows.annotate import make_plan

    with FaultProxy(endpoint, Faults()) as proxy:
        plan = make_plan(src, dst, load_config(overrides=[f"storage.endpoint_url={proxy.url}"]), read_only=True)
    return {"new": plan.new, "done": plan.already_done}, dict(proxy.faults.kinds)


@pytest.mark.slow
def test_a_plan_after_compaction_asks_the_same_whatever_the_history(s3_server, s3_bucket, s3_fs, ray_cluster):
    from samflow.store.catalog import Catalog

    storage = _storage(s3_server)
    src = f"{s3_bucket}/bounded/src"
    new = _loose_source(s3_fs, src, 20)
    asked = {}
    for count in (300, 1100):  # both fill every bucket of the done table; the second, two LIST pages of markers
        dst = f"{s3_bucket}/bounded/out{count}"
        commit_shards(dst, storage, _history(count), compacted=True)
        assert Catalog(dst, storage).checkpoint() == count
        plan, asked[count] = _plan_requests(src, dst, s3_server)
        assert plan == {"new": len(new), "done": 0}
    small, large = (sum(asked[n].values()) for n in (300, 1100))
    assert large == small, asked
    assert large <= 100, asked
    assert not any(asked[1100].get(kind) for kind in WRITES), asked


def _tar(names: list[str]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            data = name.encode() * (4000 if "new" in name else 1)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.slow
def test_a_tar_done_whole_is_not_opened_again_until_it_changes(s3_server, s3_bucket, s3_fs, ray_cluster):
    from samflow.config import load_config
    from samflow.flows.annotate import make_plan, record_whole

    src, dst = f"{s3_bucket}/whole/src", f"{s3_bucket}/whole/out"
    members = {name: [f"{name}-{n}.jpg" for n in range(4)] for name in ("a", "b")}
    for name, files in members.items():
        s3_fs.pipe_file(f"{src}/{name}.tar", _tar(files))
    keys = {name: [f"{src}/{name}.tar#{f}" for f in files] for name, files in members.items()}
    commit_shards(dst, _storage(s3_server), {"h0": keys["a"] + keys["b"][:1]}, compacted=True)
    cfg = load_config(overrides=[f"storage.endpoint_url={s3_server}"])

    first = make_plan(src, dst, cfg)  # a run's plan finds a.tar done whole; the run records it
    assert (first.new, first.already_done) == (3, 5)
    assert list(first.whole) == [f"{src}/a.tar"] and record_whole(dst, cfg, first) == 1
    with FaultProxy(s3_server, Faults()) as proxy:
        again = make_plan(src, dst, load_config(overrides=[f"storage.endpoint_url={proxy.url}"]), read_only=True)
    assert (again.new, again.already_done, again.listed) == (3, 5, 8)
    assert proxy.faults.paths[f"/{src[5:]}/b.tar"] and not proxy.faults.paths[f"/{src[5:]}/a.tar"]

    s3_fs.pipe_file(f"{src}/a.tar", _tar([*members["a"], "a-new.jpg"]))  # rewritten, another size: opened again
    changed = make_plan(src, dst, cfg, read_only=True)
    assert (changed.new, changed.already_done) == (4, 5)


def _stage_shard(catalog, run_id: str, shard: str, uris: list[str]):
    """Stage a shard's images file and done keys as a write task does; its ShardResult."""
    import io

    import pyarrow.parquet as pq

    from samflow.store.catalog import DONE, ShardResult
    from samflow.store.doneset import done_table

    buffer = io.BytesIO()
    pq.write_table(done_table(uris, [""] * len(uris)), buffer)
    catalog.put_staged(run_id, DONE, shard, buffer.getvalue())
    catalog.put_staged(run_id, "images", shard, b"images rows (not read here)")
    return ShardResult(shard, uris, {"images": len(uris), DONE: len(uris)})


@pytest.mark.slow
def test_a_runs_cleanup_reads_what_killed_runs_left_not_the_history(s3_server, s3_bucket, s3_fs, ray_cluster):
    from samflow.config import load_config
    from samflow.flows.annotate import make_plan
    from samflow.store.catalog import Catalog

    storage = _storage(s3_server)
    src = f"{s3_bucket}/cleanup/src"
    uris = _loose_source(s3_fs, src, 6)
    asked = {}
    for count in (50, 1100):  # 1100 table files in a folder: two LIST pages to list them
        dst = f"{s3_bucket}/cleanup/out{count}"
        catalog = Catalog(dst, storage)
        history = _history(count)
        commit_shards(dst, storage, history, compacted=True)
        catalog.fs.pipe({catalog.path("images", f"{shard}.parquet"): b"rows" for shard in history})
        assert catalog.checkpoint() == count
        # Left by a run killed before intents existed: the output's first cleanup sweeps it.
        stray = catalog.path("images", "before-intents.parquet")
        s3_fs.pipe_file(stray, b"rows")
        assert catalog.remove_uncommitted(catalog.committed_names()) == [stray]

        catalog.commit("run-1", _stage_shard(catalog, "run-1", "kept", uris[2:]))
        # Killed after its intent and moves, before its marker: files in place, none committed.
        catalog.place("run-1", "killed", [_stage_shard(catalog, "run-1", "killed", uris[:2])])
        assert s3_fs.exists(catalog.path("images", "killed.parquet"))
        committed = catalog.committed_names()
        with FaultProxy(s3_server, Faults()) as proxy:
            removed = Catalog(dst, _storage(proxy.url)).remove_uncommitted(committed)
        asked[count] = dict(proxy.faults.kinds)
        assert sorted(removed) == [catalog.path(table, "killed.parquet") for table in ("_done", "images")]
        # What the killed run committed stays; its intents are gone, the format marker stays.
        assert s3_fs.exists(catalog.path("images", "kept.parquet"))
        s3_fs.invalidate_cache()
        assert s3_fs.find(catalog.path("_commits", "_pending")) == [catalog.path("_commits", "_pending", "_format.json")]
        plan = make_plan(src, dst, load_config(overrides=[f"storage.endpoint_url={s3_server}"]))
        assert (plan.new, plan.already_done, plan.removed_uncommitted) == (2, 4, 0)  # the killed shard's items again
        assert sorted(item["uri"] for item in plan.items.take_all()) == sorted(uris[:2])
    assert asked[50] == asked[1100], asked
    assert asked[1100]["LIST"] <= 3, asked
