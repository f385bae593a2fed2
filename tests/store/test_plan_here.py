"""A plan of few loose files is made in the driver, without Ray tasks: the same rows, blocks and
counts as the plan in Ray, on a fresh output and on one with done keys compacted and pending."""

from __future__ import annotations

import pyarrow as pa
import pytest
import ray

from samflow.config import load_config
from samflow.inputs import files
from samflow.inputs.plan import todo_blocks
from samflow.store import doneset
from samflow.store.catalog import Catalog
from tests.helpers.history import commit_shards


def _blocks(dataset: ray.data.Dataset) -> list[pa.Table]:
    return [ray.get(ref) for ref in dataset.to_arrow_refs()]


@pytest.mark.parametrize("history", ["fresh", "compacted", "pending", "both"])
def test_the_plan_here_gives_what_the_plan_in_ray_gives(tmp_path, ray_cluster, history):
    cfg = load_config()
    dst = str(tmp_path / "out")
    listed = [(f"{tmp_path}/src/{i:03d}.jpg", 100 + i) for i in range(45)] + [(f"{tmp_path}/src/000.jpg", 100)]
    uris = [uri for uri, _ in listed]
    if history in ("compacted", "both"):
        commit_shards(dst, cfg.storage, {"a": uris[3:9], "b": uris[20:21]}, compacted=True)
    if history in ("pending", "both"):
        commit_shards(dst, cfg.storage, {"c": uris[30:33], "d": [f"{tmp_path}/src/gone.jpg"]}, compacted=False)
    committed = Catalog(dst, cfg.storage).committed_names()

    def shape(todo, n):
        return todo_blocks(todo, "files", n)

    here = doneset.plan(files.key_table(listed), dst, cfg.storage, committed, shape=shape)
    in_ray = doneset.plan(files.key_dataset(listed), dst, cfg.storage, committed, shape=shape)
    assert (here.listed, here.new) == (in_ray.listed, in_ray.new)
    done = {"fresh": 0, "compacted": 7, "pending": 3, "both": 10}[history]
    assert here.new == 45 - done
    ours, theirs = _blocks(here.todo), _blocks(in_ray.todo)
    # Blocks of exactly 8 rows but the last, in the join's order (Ray's repartition also cuts a
    # short block where its input blocks end, and hands them over as they finish).
    assert [b.num_rows for b in ours] == [8] * (here.new // 8) + ([here.new % 8] if here.new % 8 else [])
    assert _sorted(ours).equals(_sorted(theirs))
    # A read-only plan (no shape) answers the same too.
    ro_here = doneset.plan(files.key_table(listed), dst, cfg.storage, committed)
    ro_ray = doneset.plan(files.key_dataset(listed), dst, cfg.storage, committed)
    assert _sorted(_blocks(ro_here.todo)).equals(_sorted(_blocks(ro_ray.todo)))


def _sorted(blocks: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(blocks).sort_by("uri")
