"""User mistakes on the command line: one clear line on stderr, exit code 2, no traceback, in
seconds (checked before Prefect and Ray start), and never retried. Run through the real CLI in a
subprocess; bucket cases against the moto S3 server, a 403 from a proxy in front of it."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.s3_proxy import FaultProxy, Faults

ROOT = Path(__file__).resolve().parents[2]
# A user error is found before Prefect's server and Ray start: a couple of CPU seconds (starting
# them costs far more). CPU time, not wall time, because test machines are shared and busy.
FAST_CPU_S = 8.0


def samflow(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if args[0] == "annotate" and "--profile" not in args:
        args = (*args, "--profile", "tiny")  # offline: tiny:// models unless a test names one
    done = subprocess.run([sys.executable, "-m", "samflow.cli.main", *args], capture_output=True,
                          text=True, env=environment, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def assert_user_error(done: subprocess.CompletedProcess, seconds: float, *needles: str) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("samflow annotate: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert seconds < FAST_CPU_S, f"took {seconds:.1f} CPU s"
    return lines[0]


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not really a png")
    return folder


def test_missing_source(tmp_path):
    done, seconds = samflow("annotate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert_user_error(done, seconds, "source", "nowhere", "not found")
    assert not (tmp_path / "out").exists()


def test_misspelt_config_key_names_the_valid_ones(images, tmp_path):
    done, seconds = samflow("annotate", str(images), "--out", str(tmp_path / "out"),
                            "--set", "stages.segment.batchsize=4")
    line = assert_user_error(done, seconds, "stages.segment.batchsize", "batch_size", "num_gpus")
    assert "pydantic" not in line and "errors.pydantic.dev" not in done.stderr


def test_bad_config_value_and_malformed_override(images, tmp_path):
    done, seconds = samflow("annotate", str(images), "--out", str(tmp_path / "out"),
                            "--set", "stages.segment.batch_size=0")
    assert_user_error(done, seconds, "stages.segment.batch_size", "greater than or equal to 1")
    done, seconds = samflow("annotate", str(images), "--out", str(tmp_path / "out"), "--set", "engine")
    assert_user_error(done, seconds, "KEY=VALUE")
    config = tmp_path / "run.yaml"
    config.write_text("stages: [oops\n")
    done, seconds = samflow("annotate", str(images), "--out", str(tmp_path / "out"), "--config", str(config))
    assert_user_error(done, seconds, "config")


def test_model_that_cannot_load(images, tmp_path):
    done, seconds = samflow("annotate", str(images), "--out", str(tmp_path / "out"),
                            "--set", f"stages.segment.model={tmp_path / 'no-such-model'}")
    assert_user_error(done, seconds, "stages.segment.model", "no-such-model", "does not exist")
    done, seconds = samflow("annotate", str(images), "--out", str(tmp_path / "out"),
                            "--set", "stages.embed.model=tiny://nonsense")
    assert_user_error(done, seconds, "stages.embed.model", "family")
    done, seconds = samflow("annotate", str(images), "--out", str(tmp_path / "out"),
                            "--set", "stages.segment.model=nobody/not-a-model", env={"HF_HUB_OFFLINE": "1"})
    assert_user_error(done, seconds, "stages.segment.model", "nobody/not-a-model", "not in the local")


def test_verbose_shows_the_traceback(tmp_path):
    done, _ = samflow("annotate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "-v")
    assert done.returncode == 2
    assert "Traceback" in done.stderr and done.stderr.strip().splitlines()[-1].startswith("samflow annotate: source")


def test_missing_bucket(s3_server, tmp_path):
    done, seconds = samflow("annotate", "s3://no-such-bucket-samflow/in", "--out", str(tmp_path / "out"))
    assert_user_error(done, seconds, "s3://no-such-bucket-samflow/in", "bucket does not exist")


def test_missing_output_bucket(s3_bucket, images, tmp_path):
    done, seconds = samflow("annotate", str(images), "--out", "s3://no-such-bucket-samflow/out")
    assert_user_error(done, seconds, "output s3://no-such-bucket-samflow/out", "bucket does not exist")


def test_denied_bucket_fails_at_once(s3_server, s3_bucket, tmp_path):
    bucket = s3_bucket.removeprefix("s3://")
    with FaultProxy(s3_server, Faults(denied={bucket})) as proxy:
        done, seconds = samflow("annotate", f"{s3_bucket}/in", "--out", str(tmp_path / "out"),
                                env={"AWS_ENDPOINT_URL": proxy.url})
        requests = proxy.faults.counts["denied"]
    assert_user_error(done, seconds, "access denied", "AccessDenied", bucket)
    assert requests == 1  # a 403 is not retried


def test_no_credentials(s3_bucket, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_EC2_METADATA_DISABLED": "true"}
    done, seconds = samflow("annotate", f"{s3_bucket}/in", "--out", str(tmp_path / "out"), env=env)
    assert_user_error(done, seconds, "credentials", "AWS_ACCESS_KEY_ID")


def test_unexpected_failure_exits_1_and_says_where_the_details_are(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "_commits").mkdir()
    (out / "images" / "s1.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (out / "_commits" / "s1.json").write_text(json.dumps({"shard": "s1", "uris": ["x"], "rows": {"images": 1}}))
    done, _ = samflow("export", "coco", str(out), str(tmp_path / "coco.json"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("samflow export: unexpected failure:")
    log = Path(lines[0].split("details: ", 1)[1].split(",", 1)[0])
    assert "Traceback" in log.read_text()
    log.unlink()


def test_plan_task_does_not_retry_a_permanent_error(prefect_server, tmp_path):
    from prefect import flow

    from samflow.config import RunConfig
    from samflow.flows.annotate import plan_run

    # Counted in-process: the server learns of task runs only through the events stream, which
    # may drop events under load, so its run_count is not a reliable witness.
    attempts: list[int] = []
    counted = plan_run.with_options(on_running=[lambda task, run, state: attempts.append(run.run_count)])

    @flow
    def plan_only() -> bool:
        state = counted(str(tmp_path / "nowhere"), str(tmp_path / "out"), RunConfig(), return_state=True)
        return state.is_failed()

    assert plan_only()
    assert plan_run.retries == 2  # retries stay for transient errors...
    assert len(attempts) == 1, attempts  # ...but a missing source is permanent: one attempt


def test_permanent_errors_are_recognised_through_wrappers_and_transient_ones_are_not():
    from botocore.exceptions import ClientError
    from prefect.states import Failed
    from ray.exceptions import RayTaskError
    from s3fs.errors import translate_boto_error

    from samflow.errors import retry_unless_permanent, user_error
    from samflow.models.loading.registry import ModelLoadError

    def s3_error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": code, "BucketName": "raw"}}, "ListObjectsV2")

    assert "bucket does not exist" in str(user_error(s3_error("NoSuchBucket")))
    denied = translate_boto_error(s3_error("AccessDenied"))  # what s3fs raises: PermissionError from ClientError
    assert isinstance(denied, PermissionError) and "AccessDenied" in str(user_error(denied))
    in_actor = RayTaskError("SegmentStage.__init__", "Traceback ...", ModelLoadError("could not load sam from x"))
    assert "a model cannot load: could not load sam from x" in str(user_error(in_actor))
    for transient in (s3_error("SlowDown"), s3_error("InternalError"), ConnectionResetError("reset"), TimeoutError()):
        assert user_error(transient) is None
        assert retry_unless_permanent(None, None, Failed(data=transient)) is True
    assert retry_unless_permanent(None, None, Failed(data=FileNotFoundError("source not found: /x"))) is False
