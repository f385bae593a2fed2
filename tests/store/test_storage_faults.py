"""Flaky storage: a proxy in front of the S3 test server answers 503 SlowDown to a share of
requests and cuts others off; samflow's storage layer (botocore retries from storage.retries)
rides it out with exact results, and a whole annotate run through it completes exactly. A 403
is not retried (see test_user_errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError

from samflow.config import StorageConfig
from samflow.scenes.sample import write_sample_dataset
from samflow.store.storage import list_files, read_bytes, write_bytes
from tests.helpers.cli_summary import summary_of
from tests.helpers.s3_proxy import FaultProxy, Faults

ROOT = Path(__file__).resolve().parents[2]


def test_reads_lists_and_writes_survive_slowdowns_and_resets(s3_server, s3_bucket, s3_fs):
    payloads = {f"{s3_bucket}/flaky/in/{i:02d}.bin": os.urandom(1000 + i) for i in range(12)}
    for uri, data in payloads.items():
        s3_fs.pipe(uri, data)
    faults = Faults(slowdown_rate=0.3, reset_rate=0.1, seed=7)
    with FaultProxy(s3_server, faults) as proxy:
        storage = StorageConfig(endpoint_url=proxy.url, retries={"max_attempts": 12})
        listed = list_files(f"{s3_bucket}/flaky/in", storage, ["**"], [])
        assert [uri for uri, _ in listed] == sorted(payloads)
        for uri, data in payloads.items():
            assert read_bytes(uri, storage) == data
            write_bytes(uri.replace("/in/", "/out/"), data[::-1], storage)
    assert faults.counts["slowdown"] >= 3 and faults.counts["reset"] >= 1, faults.counts
    for uri, data in payloads.items():
        assert s3_fs.cat(uri.replace("/in/", "/out/")) == data[::-1]  # every write whole


def test_without_retries_the_same_faults_fail(s3_server, s3_bucket, s3_fs):
    s3_fs.pipe(f"{s3_bucket}/flaky2/x.bin", b"x")
    with FaultProxy(s3_server, Faults(slowdown_rate=1.0)) as proxy:
        storage = StorageConfig(endpoint_url=proxy.url, retries={"max_attempts": 1})
        with pytest.raises(OSError):
            read_bytes(f"{s3_bucket}/flaky2/x.bin", storage)


def test_an_upload_cut_short_publishes_nothing_and_a_retry_writes_it_whole(s3_server, s3_bucket, s3_fs):
    data = os.urandom(300_000)
    uri = f"{s3_bucket}/cut/object.bin"
    with FaultProxy(s3_server, Faults(cut_rate=1.0)) as proxy:
        with pytest.raises((OSError, BotoCoreError)):  # every attempt cut: the write fails
            write_bytes(uri, data, StorageConfig(endpoint_url=proxy.url, retries={"max_attempts": 1}))
        assert proxy.faults.counts["cut"] >= 1
    assert not s3_fs.exists(uri)  # nothing under the final name, not even a part
    faults = Faults(cut_rate=0.5, seed=1)  # the first PUT is cut, the second goes through
    with FaultProxy(s3_server, faults) as proxy:
        write_bytes(uri, data, StorageConfig(endpoint_url=proxy.url, retries={"max_attempts": 10}))
    assert faults.counts["cut"] >= 1 and s3_fs.cat(uri) == data


@pytest.mark.slow
def test_annotate_run_through_flaky_storage_completes_exactly(s3_server, s3_bucket, s3_fs, tmp_path):
    local = tmp_path / "in"
    written = write_sample_dataset(local, n_synthetic=3, seed=4, include_skimage=False)
    for path in written:
        s3_fs.put_file(str(path), f"{s3_bucket}/run-in/{path.name}")
    faults = Faults(slowdown_rate=0.15, reset_rate=0.05, seed=3)
    with FaultProxy(s3_server, faults) as proxy:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_ENDPOINT_URL": proxy.url}
        done = subprocess.run(
            [sys.executable, "-m", "samflow.cli.main", "annotate", f"{s3_bucket}/run-in", "--out",
             f"{s3_bucket}/run-out", "--profile", "tiny", "--set", "stages.embed.enabled=false",
             "--set", "storage.retries.max_attempts=12"],
            capture_output=True, text=True, env=env, timeout=900,
        )
    assert done.returncode == 0, done.stderr
    counts = summary_of(done.stdout)["counts"]
    assert counts["inputs"] == len(written) == counts["images"] and counts["errors"] == 0
    assert faults.counts["slowdown"] + faults.counts["reset"] >= 3, faults.counts
    committed = [p for p in s3_fs.ls(f"{s3_bucket}/run-out/_commits", detail=False) if p.endswith(".json")]  # markers
    markers = [json.loads(s3_fs.cat(path)) for path in committed]
    assert sorted(uri for marker in markers for uri in marker["uris"]) == sorted(
        f"{s3_bucket}/run-in/{path.name}" for path in written
    )
    assert not s3_fs.exists(f"{s3_bucket}/run-out/_staging")
