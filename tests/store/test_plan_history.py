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

