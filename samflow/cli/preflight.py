"""Checks that take a second and spare the user a long start-up before a certain failure: the
source exists and can be listed, the output's bucket is there and reachable, the credentials
work, every enabled stage names a model that can be found. Each failure is a UserError naming
what to fix. Run by the CLI before Prefect and Ray start."""

from __future__ import annotations

import os

HUB_TIMEOUT_S = 5.0

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
    """Models named by a local path must exist; tiny:// and random:// must name a family; a Hub
    id must be in the local cache or known to a Hub that answers within seconds (else the
    loader would wait on the network in every actor)."""
    from samflow.models.loading.registry import FAMILIES, ModelLoadError, parse_uri

    for name in ("upscale", "propose", "segment", "embed"):
        stage = getattr(cfg.stages, name)
        if not stage.enabled:
            continue
        key = f"stages.{name}.model"
        try:
            source = parse_uri(stage.model)
        except ModelLoadError as exc:
            raise UserError(f"{key}: {exc}") from exc
        if source.in_code and source.location not in FAMILIES:
            raise UserError(f"{key}: {stage.model} names no model family; known: {', '.join(FAMILIES)}")
        if source.kind == "local" and not os.path.exists(source.location):
            raise UserError(
                f"{key}: model {stage.model} does not exist (a local path); give a model directory, "
                "a checkpoint file, a Hub id or tiny://<family>"
            )
        if source.kind == "hub":
            _check_hub_model(key, source.location)
    _check_track_model(cfg)


def _check_track_model(cfg: RunConfig) -> None:
    """An in-code track model must be a family that tracks (sam2, sam3). Nothing else is checked
    here: the track model loads only when a video comes, so an image-only run never needs it."""
    from samflow.models.loading.registry import ModelLoadError, parse_uri
    from samflow.models.loading.video import VIDEO_FAMILIES

    track = cfg.stages.track
    if not (track.enabled and cfg.stages.segment.enabled):
        return
    try:
        source = parse_uri(track.model)
    except ModelLoadError as exc:
        raise UserError(f"stages.track.model: {exc}") from exc
    if source.in_code and source.location not in VIDEO_FAMILIES:
        raise UserError(
            f"stages.track.model: {track.model} cannot track videos; use a SAM 2 / 2.1 or SAM 3 model "
            f"({', '.join(f'{source.kind}://{f}' for f in VIDEO_FAMILIES)}, a Hub id or a model directory)"
        )


def _check_hub_model(key: str, location: str) -> None:
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    repo = "/".join(location.split("/")[:2])
    if isinstance(try_to_load_from_cache(repo, "config.json"), str) or _any_cached(repo):
        return
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"{key}: model {location} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                        "download it first or give a local path")
    try:
        HfApi().model_info(repo, timeout=HUB_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any answer but a model info means it cannot load
        raise UserError(
            f"{key}: model {location} is not in the local cache and cannot be fetched from the Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "check the id or the network, or give a local path"
        ) from exc


def _any_cached(repo: str) -> bool:
    from huggingface_hub import scan_cache_dir

    try:
        return any(r.repo_id == repo for r in scan_cache_dir().repos)
    except Exception:  # noqa: BLE001 - no cache folder yet
        return False


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
