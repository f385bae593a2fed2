"""Checks that take a second and spare the user a long start-up before a certain failure: the
source exists and can be listed, the output's bucket is there and reachable, the credentials
work, every enabled stage names a model that can be found. Each failure is a UserError naming
what to fix. Run by the CLI before Prefect and Ray start."""

from __future__ import annotations

import os

from samflow.config import RunConfig, StorageConfig
from samflow.errors import UserError, user_error
from samflow.store.storage import filesystem


def check_run(src: str, dst: str, cfg: RunConfig) -> None:
    check_source(src, cfg.storage)
    check_output(dst, cfg.storage)
    check_models(cfg)


def check_source(src: str, storage: StorageConfig) -> None:
    fs, path = filesystem(src, storage)
    if _is_s3(fs):
        _probe_s3(fs, path, f"source {src}")
        if "/" in path and not fs.exists(path):
            raise UserError(f"source {src} not found: no object or prefix of that name")
        return
    if not fs.exists(path):
        raise UserError(f"source {src} not found: give an existing folder, file or s3:// prefix")
    if not os.access(path, os.R_OK):
        raise UserError(f"source {src} cannot be read: permission denied")


def check_output(dst: str, storage: StorageConfig) -> None:
    fs, path = filesystem(dst, storage)
    if _is_s3(fs):
        _probe_s3(fs, path, f"output {dst}")
        return
    if fs.isfile(path):
        raise UserError(f"output {dst} is a file; give a folder (it is created if missing)")
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing and not os.access(existing, os.W_OK):
        raise UserError(f"output {dst} cannot be written: permission denied on {existing}")


def check_models(cfg: RunConfig) -> None:
    """Every model the run's stages name passes the model preflight (`models.loading.preflight`):
    it exists, can be reached (remote ones are fetched into this node's model cache), matches its
    pin, and is of a family that does the stage's task."""
    from samflow.actors.table import STAGE_TABLE
    from samflow.models.loading.preflight import preflight_model
    from samflow.models.loading.registry import ModelLoadError

    for entry in STAGE_TABLE:
        section = getattr(cfg.stages, entry.section)
        if not entry.runs(section, cfg):
            continue
        pin = section.model_sha256 if entry.model_field == "model" else None
        try:
            preflight_model(getattr(section, entry.model_field), entry.model_task, family=getattr(section, "family", "auto"),
                            storage=cfg.storage, sha256=pin)
        except ModelLoadError as exc:
            raise UserError(f"stages.{entry.section}.{entry.model_field}: {exc}") from exc


def _is_s3(fs: object) -> bool:
    return "s3" in getattr(fs, "protocol", ()) or getattr(fs, "protocol", None) == "s3"


def _probe_s3(fs: object, path: str, what: str) -> None:
    """One LIST under the path: fails on a missing bucket, denied access, bad credentials."""
    bucket, _, prefix = path.partition("/")
    try:
        fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - mapped to a user error or raised as it is
        mapped = user_error(exc)
        if mapped is None:
            raise
        raise UserError(f"{what}: {mapped}") from exc
