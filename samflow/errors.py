"""Mistakes a user can fix, told in one line: what went wrong and what to do about it.

``user_error(exc)`` looks through an exception, its causes and the wrappers Prefect and Ray put
around it, and returns a :class:`UserError` when the failure is one no retry can cure (a missing
source, a denied or missing bucket, no credentials, a bad config key or value, a model that cannot
load); ``None`` for anything else (an unexpected failure, or a transient one worth retrying).

The CLI turns a ``UserError`` into exit code 2 and one line on stderr; Prefect tasks use
:func:`retry_unless_permanent` so they never retry what cannot succeed. Any subcommand can raise
``UserError("...")`` itself to get the same treatment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# botocore error codes that no retry cures, and what the user should do about each.
_S3_CODES = {
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied",
    "InvalidAccessKeyId": "the access key is not known to this endpoint",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "ExpiredToken": "the session token has expired",
    "NoSuchBucket": "the bucket does not exist",
    "InvalidBucketName": "not a valid bucket name",
}
_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or storage.anon=true for a public bucket"
)
_ACCESS_HINT = "check the credentials and the bucket's policy"


class UserError(Exception):
    """A failure the user can fix; ``str()`` is the whole message (one line, no traceback)."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: ``__cause__`` / ``__context__`` chains and the ``cause``
    attribute of Ray's task and actor errors. Each exception once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "cause", None)
        stack += [c for c in (current.__context__, current.__cause__, wrapped) if isinstance(c, BaseException)]


def user_error(exc: BaseException) -> UserError | None:
    """The user-facing form of ``exc`` when it is a permanent, user-fixable failure, else None."""
    chain = list(causes(exc))
    # The specific reading first (an S3 error code beats the OSError s3fs translated it into).
    for classify in (_classify, _classify_os_error):
        for found in chain:
            mapped = classify(found)
            if mapped is not None:
                return mapped
    return None


def is_permanent(exc: BaseException) -> bool:
    return user_error(exc) is not None


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task unless its error cannot succeed."""
    data = getattr(state, "data", None)
    return not (isinstance(data, BaseException) and is_permanent(data))


def _classify(exc: BaseException) -> UserError | None:
    if isinstance(exc, UserError):
        return exc
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return UserError(f"no usable AWS credentials ({exc}): {_CREDENTIALS_HINT}")
    if name == "ModelLoadError" or (name == "ActorDiedError" and "ModelLoadError" in str(exc)):
        return UserError(f"a model cannot load: {_model_message(exc)}")
    if name == "ResourceShortage":  # the cluster cannot host the graph; its message says the fix
        return UserError(one_line(exc))
    if name == "ValidationError" and hasattr(exc, "errors"):
        return UserError(config_message(exc))
    code = _s3_code(exc)
    if code in _S3_CODES:
        hint = _CREDENTIALS_HINT if "key" in _S3_CODES[code] or "token" in _S3_CODES[code] else _ACCESS_HINT
        return UserError(f"{_S3_CODES[code]} ({code}: {_s3_target(exc)}): {hint}")
    return None


def _classify_os_error(exc: BaseException) -> UserError | None:
    if isinstance(exc, PermissionError):
        return UserError(f"access denied: {one_line(exc)}: {_ACCESS_HINT}")
    if isinstance(exc, FileNotFoundError):
        return UserError(f"not found: {one_line(exc)}")
    return None


def _s3_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def _s3_target(exc: BaseException) -> str:
    response = getattr(exc, "response", {}) or {}
    bucket = response.get("Error", {}).get("BucketName")
    return f"bucket {bucket}" if bucket else one_line(exc)


def _model_message(exc: BaseException) -> str:
    text = str(exc)
    # An actor that failed in __init__ carries the loader's message inside Ray's own report.
    for line in text.splitlines():
        if "ModelLoadError:" in line:
            return line.split("ModelLoadError:", 1)[1].strip()
    return one_line(exc)


def one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def config_message(exc: Any) -> str:
    """A pydantic ValidationError of the run config as one line: each bad key with what is
    wrong, and for an unknown key the keys that its section does have."""
    parts = []
    for error in exc.errors():
        location = [str(p) for p in error.get("loc", ())]
        key = ".".join(location)
        if error.get("type") == "extra_forbidden":
            valid = valid_keys(location[:-1])
            parts.append(f"unknown config key {key!r}" + (f" (valid here: {', '.join(valid)})" if valid else ""))
        else:
            parts.append(f"config key {key!r}: {error.get('msg')} (got {error.get('input')!r})")
    return "; ".join(parts) or str(exc)


def valid_keys(section: list[str]) -> list[str]:
    """The keys of one section of RunConfig (``[]`` = top level, ``["stages", "segment"]``)."""
    from pydantic import BaseModel

    from samflow.config import RunConfig

    model: Any = RunConfig
    for key in section:
        field = getattr(model, "model_fields", {}).get(key)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


# --- the command line's side ---------------------------------------------------------------------


def with_verbose_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``-v/--verbose`` to the parser and to every subcommand's parser (at any depth), so it
    goes before or after the subcommand. Subcommands added by anyone get it without asking."""
    _add_verbose(parser, default=0)
    for sub in _subparsers(parser):
        with_verbose_flag_sub(sub)
    return parser


def with_verbose_flag_sub(parser: argparse.ArgumentParser) -> None:
    _add_verbose(parser, default=argparse.SUPPRESS)  # a parent's -v is not reset by the child
    for sub in _subparsers(parser):
        with_verbose_flag_sub(sub)


def _add_verbose(parser: argparse.ArgumentParser, default: Any) -> None:
    try:
        parser.add_argument("-v", "--verbose", action="count", default=default,
                            help="show library logs and tracebacks (-vv: debug)")
    except argparse.ArgumentError:
        pass  # the subcommand defines its own -v


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:  # argparse has no public way to walk subcommands
        if isinstance(action, argparse._SubParsersAction):
            found += list(dict.fromkeys(action.choices.values()))
    return found


def report_failure(exc: BaseException, prog: str, verbose: int) -> int:
    """Tell the user about a failed command; the exit code: 2 for a user error, else 1.

    A user error is one line (``-v`` adds the traceback). Anything else is a bug or an outage:
    one line naming it, and the full traceback in a log file whose path is printed."""
    mapped = user_error(exc)
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    if mapped is not None:
        print(f"{prog}: {mapped}", file=sys.stderr)
        return 2
    where = "above" if verbose else _save_traceback(exc, prog)
    print(f"{prog}: unexpected failure: {type(exc).__name__}: {one_line(exc)} (details: {where})",
          file=sys.stderr)
    return 1


def _save_traceback(exc: BaseException, prog: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = Path(tempfile.gettempdir()) / f"{prog.replace(' ', '-')}-{stamp}.log"
    try:
        path.write_text("".join(traceback.format_exception(exc)))
    except OSError:
        return "rerun with -v"
    return f"{path}, or rerun with -v"
