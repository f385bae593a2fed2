"""`samflow submit` against a real Ray head (ray start --head on localhost, token auth on).

The head runs in its own temp dir and ports and is never exported as RAY_ADDRESS, so local
`ray.init()` clusters of other tests in the same session do not see it; teardown stops only the
processes of this head.
"""

from __future__ import annotations

import io
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Iterator

import pytest
from packaging.requirements import Requirement

from samflow.cli import submit
from samflow.cli.submit import SubmitError, run_submit
from tests.helpers.cli_process import hears_ctrl_c
from tests.helpers.ray_head import RayHead, running_head

ROOT = Path(__file__).resolve().parents[2]

PROBE = """\
import os, sys, time
what = sys.argv[1]
print("probe: cwd has marker", os.path.exists("marker.txt"), flush=True)
for name in sorted(os.environ):
    if name.startswith(("AWS_", "SAMFLOW_PROBE")):
        print("probe: env", name, os.environ[name], flush=True)
if what == "fail":
    print("probe: failing on purpose", flush=True)
    sys.exit(3)
if what == "sleep":
    print("probe: sleeping", flush=True)
    time.sleep(120)
print("probe: done", flush=True)
"""
PROBE_PROGRAM = ("python", "probe.py")


# ------------------------------------------------------------------------- unit (no cluster)


def test_token_lookup_follows_rays_order(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-default-file\n")
    token_file = tmp_path / "token"
    token_file.write_text("from-path-var\n")

    assert submit.ray_auth_token({}, home=tmp_path / "nohome") is None
    assert submit.ray_auth_token({}, home=home) == "from-default-file"
    assert submit.ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}, home=home) == "from-path-var"
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert submit.ray_auth_token(env, home=home) == "from-env"
    with pytest.raises(SubmitError, match="cannot be read"):
        submit.ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home=home)
    assert submit.auth_headers("abc") == {"Authorization": "Bearer abc"}
    assert submit.auth_headers(None) == {}


def test_runtime_env_ships_checkout_and_pyproject_pins():
    root = submit.repo_root()
    assert root == ROOT
    runtime_env = submit.build_runtime_env(root, pip=True)
    assert runtime_env["working_dir"] == str(ROOT)
    assert ".venv" in runtime_env["excludes"] and ".git" in runtime_env["excludes"]
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # Installed metadata may reorder specifiers ("numpy<2.6,>=2.0"): compare as requirements.
    assert _requirements(runtime_env["pip"]["packages"]) == _requirements(pins)
    assert "pip" not in submit.build_runtime_env(root, pip=False)
    assert "env_vars" not in runtime_env  # nothing from this environment unless asked for
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)  # Ray accepts it as a runtime_env


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    return {Requirement(line).name: Requirement(line) for line in lines}


def test_pip_and_forwarding_switches_read_the_environment():
    assert submit.pip_enabled({}) is True
    assert submit.pip_enabled({"SAMFLOW_SUBMIT_PIP": "0"}) is False
    env = {"SAMFLOW_SUBMIT_FORWARD_ENV": "AWS_ENDPOINT_URL, AWS_REGION,UNSET", "AWS_ENDPOINT_URL": "http://minio:9000",
           "AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "x" * 40}
    assert submit.forwarded_env(env) == {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-west-1"}


@pytest.mark.parametrize(
    "env_vars",
    [{"AWS_SECRET_ACCESS_KEY": "abc"}, {"AWS_ACCESS_KEY_ID": "AKIA"}, {"RAY_AUTH_TOKEN": "t"},
     {"HF_TOKEN": "t"}, {"DB_PASSWORD": "p"}, {"OPENAI_API_KEY": "k"}],
)
def test_secrets_are_refused_by_name(env_vars):
    with pytest.raises(SubmitError, match="credentials must come from"):
        submit.check_no_secrets(env_vars, environ={})


def test_secrets_are_refused_by_value_under_an_innocent_name():
    environ = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG"}
    with pytest.raises(SubmitError):
        submit.check_no_secrets({"MY_SETTING": "wJalrXUtnFEMI-K7MDENG"}, environ=environ)
    submit.check_no_secrets({"AWS_ENDPOINT_URL": "http://minio:9000"}, environ=environ)


def test_run_submit_refuses_a_secret_before_contacting_any_cluster(monkeypatch):
    err = io.StringIO()
    # Port 9 (discard) on loopback: nothing listens; the refusal must come first anyway.
    code = run_submit("127.0.0.1:9", ["annotate", "a", "--out", "b"], pip=False,
                      env_vars={"AWS_SECRET_ACCESS_KEY": "very-secret-value"}, err=err)
    assert code == 1
    assert "refusing to put AWS_SECRET_ACCESS_KEY" in err.getvalue()
    assert "very-secret-value" not in err.getvalue()


def test_entrypoint_quotes_each_argument():
    entry = submit.build_entrypoint(["annotate", "s3://b/my photos", "--out", "s3://b/o;rm -rf"])
    assert entry == "python -m samflow.cli.main annotate 's3://b/my photos' --out 's3://b/o;rm -rf'"
    assert submit.submission_id(["--profile", "tiny"]).startswith("samflow-tiny-")
    assert submit.submission_id(["annotate", "x"]).startswith("samflow-annotate-")
    assert submit.normalize_address("head:8265/") == "http://head:8265"


def test_unreachable_cluster_is_a_clear_failure():
    err = io.StringIO()
    assert run_submit("http://127.0.0.1:9", ["--version"], pip=False, err=err) == 1
    assert "127.0.0.1:9" in err.getvalue()


# ----------------------------------------------------------------------------- real Ray head












@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    with running_head(num_cpus=1) as head:
        yield head




@pytest.fixture
def probe_dir(tmp_path) -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "marker.txt").write_text("uploaded with the working_dir\n")
    return tmp_path


@pytest.fixture
def with_token(monkeypatch, ray_head) -> RayHead:
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("SAMFLOW_SUBMIT_FORWARD_ENV", raising=False)
    return ray_head


def _job_client(head: RayHead):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address, headers=submit.auth_headers(head.token))


@pytest.mark.slow
def test_job_succeeds_streams_logs_and_keeps_secrets_home(with_token, probe_dir, monkeypatch):
    secret = "sentinel-" + secrets.token_hex(12)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # on the submitting machine only
    out, err = io.StringIO(), io.StringIO()
    code = run_submit(with_token.address, ["ok"], working_dir=str(probe_dir), pip=False,
                      env_vars={"SAMFLOW_PROBE": "forwarded"}, program=PROBE_PROGRAM, out=out, err=err)
    logs = out.getvalue()
    assert code == 0, err.getvalue() + logs
    assert "probe: cwd has marker True" in logs  # the working_dir was uploaded and is the cwd
    assert "probe: env SAMFLOW_PROBE forwarded" in logs
    assert "probe: done" in logs
    assert "SUCCEEDED" in err.getvalue()
    # The submitter's secret reached neither the job nor its recorded runtime_env, and the Ray
    # token was never printed.
    assert secret not in logs and "AWS_SECRET_ACCESS_KEY" not in logs
    job_id = err.getvalue().split("job ", 1)[1].split()[0]
    info = _job_client(with_token).get_job_info(job_id)
    assert secret not in repr(info.runtime_env) and with_token.token not in repr(info.runtime_env)
    assert with_token.token not in logs + err.getvalue()


@pytest.mark.slow
def test_failing_job_exits_1_with_its_status(with_token, probe_dir):
    out, err = io.StringIO(), io.StringIO()
    code = run_submit(with_token.address, ["fail"], working_dir=str(probe_dir), pip=False,
                      program=PROBE_PROGRAM, out=out, err=err)
    assert code == 1
    assert "probe: failing on purpose" in out.getvalue()
    assert "FAILED" in err.getvalue() and "exit code 3" in err.getvalue()


@pytest.mark.slow
def test_missing_token_is_refused_with_an_auth_message(ray_head, monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    err = io.StringIO()
    assert run_submit(ray_head.address, ["ok"], pip=False, program=PROBE_PROGRAM, err=err) == 1
    assert "auth" in err.getvalue().lower()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    err = io.StringIO()
    assert run_submit(ray_head.address, ["ok"], pip=False, program=PROBE_PROGRAM, err=err) == 1
    assert "not-the-token" not in err.getvalue()


@pytest.mark.slow
def test_no_wait_returns_the_job_id_at_once(with_token, probe_dir):
    out = io.StringIO()
    code = run_submit(with_token.address, ["ok"], working_dir=str(probe_dir), pip=False, wait=False,
                      program=PROBE_PROGRAM, out=out, err=io.StringIO())
    assert code == 0
    job_id = out.getvalue().strip()
    assert job_id.startswith("samflow-ok-")
    client = _job_client(with_token)
    assert str(client.get_job_status(job_id)) in {"PENDING", "RUNNING", "SUCCEEDED"}
    assert submit._wait_terminal(client, job_id) == "SUCCEEDED"


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


@pytest.mark.slow
def test_ctrl_c_stops_the_job(with_token, probe_dir):
    code = (
        "import sys; from samflow.cli.submit import run_submit; "
        f"sys.exit(run_submit({with_token.address!r}, ['sleep'], working_dir={str(probe_dir)!r}, "
        f"pip=False, program={PROBE_PROGRAM!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_TOKEN": with_token.token}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, text=True, preexec_fn=hears_ctrl_c,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    seen = []
    try:
        deadline = time.monotonic() + 60
        while not any("probe: sleeping" in line for line in seen):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(seen)
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 130  # it stops the job and waits up to 30 s to see it stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    while (line := lines.get(timeout=5)) is not None:
        seen.append(line)
    job_id = next(line.split("job ", 1)[1].split()[0] for line in seen if " submitted to " in line)
    assert str(_job_client(with_token).get_job_status(job_id)) == "STOPPED"


@pytest.mark.slow
def test_real_samflow_cli_runs_from_the_uploaded_checkout(with_token):
    # The default runtime_env: this checkout as working_dir (pip off: the head shares this venv).
    out, err = io.StringIO(), io.StringIO()
    assert run_submit(with_token.address, ["--version"], pip=False, out=out, err=err) == 0, err.getvalue()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"samflow {version}" in out.getvalue()


@pytest.mark.slow
def test_relative_paths_mean_the_same_place_on_the_cluster(with_token, tmp_path):
    """`samflow submit -- plan data/x --out out/x` typed in a folder: the job, which runs in the
    uploaded checkout on the head, plans the folder the user meant (a local cluster shares it)."""
    from PIL import Image

    (tmp_path / "data/pics").mkdir(parents=True)
    for n in range(3):
        Image.new("RGB", (8, 8), (40 * n, 0, 0)).save(tmp_path / f"data/pics/p{n}.png")
    env = {**os.environ, "RAY_AUTH_TOKEN": with_token.token, "PYTHONPATH": str(ROOT)}
    samflow = str(Path(sys.executable).with_name("samflow"))
    done = subprocess.run([samflow, "submit", "--address", with_token.address, "--no-pip", "--",
                           "plan", "data/pics", "--out", "out/pics"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert f"data/pics -> {tmp_path / 'data/pics'}" in done.stderr
    plan = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert plan["new"] == 3 and plan["done"] == 0
