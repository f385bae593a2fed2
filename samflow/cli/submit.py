"""``samflow submit``: run a samflow command on a Ray cluster as a Ray Job.

The job runs the same command a laptop would (``samflow annotate SRC --out DST ...``) on the
cluster's head, with a runtime_env that ships this checkout (``working_dir``) and, unless turned
off, the pinned requirements of the samflow distribution. Logs stream to stdout; the exit code is
the job's outcome (0 when it SUCCEEDED, 1 otherwise, 130 when stopped with Ctrl-C).

Credentials never travel in the runtime_env: the cluster reads S3 credentials from its own
environment. The one secret the client handles is Ray's auth token, sent as an HTTP header.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import re
import shlex
import sys
import time
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

# The entrypoint program. `python -m samflow.cli.main` is the `samflow` console script without
# needing samflow installed on the cluster: the uploaded working_dir is the job's cwd, so the
# checkout's code is what runs (and an image with samflow installed works the same way).
DEFAULT_PROGRAM: tuple[str, ...] = ("python", "-m", "samflow.cli.main")

# Not worth uploading: environments, caches, local data and outputs.
WORKING_DIR_EXCLUDES: tuple[str, ...] = (
    ".git", ".venv", "**/__pycache__", "*.egg-info", "build", ".pytest_cache",
    "bench/results", "data", "out",
)

PIP_ENV = "SAMFLOW_SUBMIT_PIP"          # "0" / "false" / "no": no pip section in the runtime_env
FORWARD_ENV = "SAMFLOW_SUBMIT_FORWARD_ENV"  # comma-separated names of non-secret vars to forward

# A variable whose name looks like a credential never goes into a runtime_env (it would be stored
# in the job's metadata and shown in the dashboard).
_SECRET_NAME = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|ACCESS_KEY|(^|_)(API_)?KEY($|_)",
    re.IGNORECASE,
)
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(RuntimeError):
    """The job could not be submitted (no cluster, refused token, bad runtime_env)."""


# ------------------------------------------------------------------------------------ auth


def ray_auth_token(environ: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """Ray's token, looked up in Ray's own order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token (what `ray get-auth-token --generate` writes). None when there is none."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    if env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
        # Like Ray: a path that is set but unreadable or empty is an error, not a silent fallback.
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read: {error.strerror}") from None
        if not token:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path} is empty")
        return token
    default = (home or Path.home()) / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


def auth_headers(token: str | None) -> dict[str, str]:
    # Sent explicitly rather than through RAY_AUTH_MODE in this process: the submitting machine
    # is not a Ray node, and a cluster without token auth ignores the header.
    return {"Authorization": f"Bearer {token}"} if token else {}


# ------------------------------------------------------------------------------ runtime_env


def repo_root() -> Path | None:
    """The checkout samflow is imported from, or None when it runs from an installed wheel."""
    import samflow

    root = Path(samflow.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    return root if project.get("name") == "samflow" else None


def pinned_requirements() -> list[str]:
    """samflow's runtime dependencies with their pins: from the installed distribution's metadata,
    else from the checkout's pyproject.toml (samflow is often run from a checkout)."""
    try:
        requires = importlib.metadata.requires("samflow") or []
        return [r for r in requires if "extra ==" not in r]
    except importlib.metadata.PackageNotFoundError:
        pass
    root = repo_root()
    if root is None:
        return []
    return list(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"])


def pip_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(PIP_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables named in SAMFLOW_SUBMIT_FORWARD_ENV that are set here. Nothing is forwarded
    by default: a laptop's AWS_ENDPOINT_URL (localhost:9000) is usually wrong on the cluster."""
    env = os.environ if environ is None else environ
    names = [n.strip() for n in env.get(FORWARD_ENV, "").split(",") if n.strip()]
    return {name: env[name] for name in names if name in env}


def check_no_secrets(env_vars: Mapping[str, str], environ: Mapping[str, str] | None = None) -> None:
    """Refuse credentials in runtime_env env_vars: by name, or by value (a secret of this
    process's environment passed under an innocent name)."""
    env = os.environ if environ is None else environ
    secret_values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 8}
    for name, value in env_vars.items():
        if _SECRET_NAME.search(name) or value in secret_values:
            raise SubmitError(
                f"refusing to put {name} into the job's runtime_env: credentials must come from "
                "the cluster's own environment (Kubernetes Secret, instance profile, ...)"
            )


def build_runtime_env(
    working_dir: str | Path | None,
    *,
    pip: bool,
    env_vars: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    runtime_env: dict[str, Any] = {}
    if working_dir is not None:
        runtime_env["working_dir"] = str(working_dir)
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES)
    if pip:
        packages = pinned_requirements()
        if packages:
            # pip_check off: the cluster image may carry extra packages with looser pins.
            runtime_env["pip"] = {"packages": packages, "pip_check": False}
    if env_vars:
        check_no_secrets(env_vars)
        runtime_env["env_vars"] = dict(env_vars)
    return runtime_env


# ------------------------------------------------------------------------------- job helpers


def absolute_local_paths(command: Sequence[str], cwd: Path) -> list[str]:
    """``command`` with each local path a user typed relative to ``cwd`` made absolute.

    The job runs in the uploaded working_dir on the head, where ``data/x`` would name another
    folder; made absolute, a path means the same place on a cluster that shares this filesystem
    (a local cluster, NFS). A token is a local path when it has no scheme, is not an option or a
    ``KEY=VALUE``, and exists here or starts with a folder that does (an output not yet written).
    """
    resolved: list[str] = []
    for token in command:
        after_output = bool(resolved) and resolved[-1] in _OUTPUT_OPTIONS
        option, eq, value = token.partition("=") if token.startswith("--") else ("", "", token)
        if token.startswith("--") and not eq:
            resolved.append(token)
        elif eq:
            resolved.append(f"{option}={_absolute(value, cwd, option in _OUTPUT_OPTIONS)}")
        else:
            resolved.append(_absolute(token, cwd, after_output))
    return resolved


_OUTPUT_OPTIONS = frozenset({"--out", "--config"})


def _absolute(token: str, cwd: Path, is_path: bool = False) -> str:
    if not token or "://" in token or "=" in token or token.startswith("-") or os.path.isabs(token):
        return token
    first = Path(token).parts[0]
    if is_path or (cwd / token).exists() or ("/" in token.rstrip("/") and (cwd / first).is_dir()):
        return str((cwd / token).resolve())
    return token


def build_entrypoint(command: Sequence[str], program: Sequence[str] = DEFAULT_PROGRAM) -> str:
    # shlex.join: URIs with spaces or shell characters reach the CLI as one argument each.
    return shlex.join([*program, *command])


def submission_id(command: Sequence[str]) -> str:
    verb = next((c for c in command if not c.startswith("-")), "job")
    slug = re.sub(r"[^a-z0-9]+", "-", verb.lower()).strip("-")[:24] or "job"
    return f"samflow-{slug}-{uuid.uuid4().hex[:8]}"


def normalize_address(address: str) -> str:
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


async def _stream_logs(client: Any, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def _wait_terminal(client: Any, job_id: str, timeout_s: float | None = 60.0) -> str:
    # The log stream closes when the job ends, but the status may lag it by a moment.
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    status = str(client.get_job_status(job_id))
    while status not in _TERMINAL and (deadline is None or time.monotonic() < deadline):
        time.sleep(0.5 if deadline is not None else 5.0)
        status = str(client.get_job_status(job_id))
    return status


def _first_line(message: str | None) -> str:
    # Ray appends the tail of the logs to a failed job's message; they were already streamed.
    lines = (message or "").strip().splitlines()
    return lines[0] if lines else ""


def _connect(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    headers = auth_headers(ray_auth_token())
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as error:  # ConnectionError, AuthenticationError, ...
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {error}") from None


def _stop(client: Any, job_id: str, err: TextIO) -> None:
    print(f"\nsamflow submit: interrupted, stopping job {job_id}", file=err)
    try:
        client.stop_job(job_id)
        status = _wait_terminal(client, job_id, timeout_s=30.0)
    except Exception as error:  # the job may have ended meanwhile, or the head gone away
        status = f"not confirmed stopped ({error})"
    print(f"samflow submit: job {job_id} {status}", file=err)


def _follow(client: Any, job_id: str, out: TextIO, err: TextIO) -> int:
    try:
        try:
            asyncio.run(_stream_logs(client, job_id, out))
            status = _wait_terminal(client, job_id)
        except Exception as error:
            # A dropped log stream does not end the job: keep waiting for its outcome.
            print(f"samflow submit: log stream lost ({error}); waiting for job {job_id}", file=err)
            status = _wait_terminal(client, job_id, timeout_s=None)
        info = client.get_job_info(job_id)
    except KeyboardInterrupt:
        _stop(client, job_id, err)
        return 130
    except Exception as error:
        print(f"samflow submit: lost contact with the cluster while following job {job_id}: {error}", file=err)
        return 1
    line = _first_line(getattr(info, "message", None))
    print(f"samflow submit: job {job_id} {status}" + (f": {line}" if line else ""), file=err)
    return 0 if status == "SUCCEEDED" else 1


# ------------------------------------------------------------------------------------ public


def run_submit(
    address: str,
    command: list[str],
    *,
    working_dir: str | None = None,
    wait: bool = True,
    pip: bool | None = None,
    env_vars: Mapping[str, str] | None = None,
    program: Sequence[str] = DEFAULT_PROGRAM,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Submit ``samflow <command...>`` to the Ray cluster whose dashboard is at ``address``.

    working_dir: uploaded as the job's cwd (default: this checkout, or none when samflow runs
    from an installed package). pip: ship the pinned requirements (default: on, unless
    SAMFLOW_SUBMIT_PIP=0; off when the cluster's image already has them or has no network).
    env_vars: extra non-secret variables for the job (plus SAMFLOW_SUBMIT_FORWARD_ENV's).
    wait: stream logs and return the job's outcome; otherwise print the job id and return 0.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    address = normalize_address(address)
    try:
        root = Path(working_dir).resolve() if working_dir else repo_root()
        if root is not None and not root.is_dir():
            raise SubmitError(f"--working-dir {root} is not a directory")
        runtime_env = build_runtime_env(
            root,
            pip=pip_enabled() if pip is None else pip,
            env_vars={**forwarded_env(), **(env_vars or {})},
        )
        job = absolute_local_paths(command, Path.cwd())
        client = _connect(address)
        job_id = client.submit_job(
            entrypoint=build_entrypoint(job, program),
            submission_id=submission_id(command),
            runtime_env=runtime_env or None,
            metadata={"samflow_version": _samflow_version()},
        )
    except SubmitError as error:
        print(f"samflow submit: {error}", file=err)
        return 1
    except Exception as error:  # the Jobs API refused the submission
        print(f"samflow submit: submission to {address} failed: {error}", file=err)
        return 1
    moved = [f"{before} -> {after}" for before, after in zip(command, job) if before != after]
    if moved:
        print(f"samflow submit: local paths sent as absolute paths (the cluster must see this filesystem): "
              f"{', '.join(moved)}", file=err)
    print(f"samflow submit: job {job_id} submitted to {address}", file=err)
    if not wait:
        print(job_id, file=out)
        print(f"samflow submit: follow it with `ray job logs --follow --address {address} {job_id}`", file=err)
        return 0
    return _follow(client, job_id, out, err)


def _samflow_version() -> str:
    try:
        return importlib.metadata.version("samflow")
    except importlib.metadata.PackageNotFoundError:
        root = repo_root()
        if root is None:
            return "unknown"
        return str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])


def register(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser("submit", help="run a samflow command as a Ray Job")
    submit.add_argument("--address", required=True, help="Ray dashboard URL, e.g. http://head:8265")
    submit.add_argument("--working-dir", help="directory shipped to the cluster")
    submit.add_argument("--no-wait", action="store_true", help="submit, print the job id, return")
    submit.add_argument("--no-pip", action="store_true",
                        help="do not pip-install samflow's pins on the cluster (it runs the samflow image)")
    submit.add_argument("job", nargs=argparse.REMAINDER, help="samflow command to run")
    submit.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not job:
        raise SystemExit("samflow submit: give the samflow command to run, e.g. annotate SRC --out DST")
    return run_submit(args.address, job, working_dir=args.working_dir, wait=not args.no_wait,
                      pip=False if args.no_pip else None)
