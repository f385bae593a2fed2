"""Will this model load? Checked in seconds, before a run starts, for every model a run names.

    family = preflight_model("s3://bkt/models/sam/", "segment", storage=cfg.storage)

Per URI kind: ``tiny://`` / ``random://`` name a family; ``torchvision://`` a Mask R-CNN builder
(its weights are not fetched here); a local path exists; a Hub id is in the local cache or known
to a Hub that answers within seconds (only its config.json is read); ``s3://`` / ``https://`` are
fetched into the model cache, which the run's actors on this node then reuse. A pin is verified
wherever it applies. Where the family can be told (URI, config.json, checkpoint keys) it must do
the stage's task. Raises ModelLoadError with the message for the user.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from samflow.models.loading.cache import fetch_model, split_pin
from samflow.models.loading.registry import (
    FAMILIES,
    ModelLoadError,
    ModelSource,
    check_task,
    families_for,
    infer_family,
    parse_uri,
)

if TYPE_CHECKING:
    from samflow.config import StorageConfig

HUB_TIMEOUT_S = 5.0


def preflight_model(uri: str, task: str, *, family: str = "auto", storage: StorageConfig | None = None,
                    sha256: str | None = None) -> str | None:
    """The family that will serve `task` for `uri` (None when only loading can tell)."""
    source = parse_uri(split_pin(uri, sha256)[0])
    if source.in_code and source.location not in FAMILIES:
        raise ModelLoadError(f"{uri} names no model family; known: {', '.join(FAMILIES)}")
    if source.kind == "local" and not os.path.exists(source.location):
        raise ModelLoadError(
            f"model {uri} does not exist (a local path); give a model directory, a checkpoint file, "
            "a Hub id, an s3:// or https:// URI, torchvision://<builder> or tiny://<family>"
        )
    read_config = None
    if source.kind == "hub":
        _check_hub_model(source.location)
        read_config = _hub_config
    local = fetch_model(uri, storage, sha256)  # remote: fetched and verified; local: pin verified
    return _family(local, task, family, read_config)


def _family(local: str, task: str, family: str, read_config) -> str | None:  # noqa: ANN001
    candidates = families_for(task)
    try:
        told = infer_family(local, read_config=read_config)
    except ModelLoadError:
        if family != "auto":
            return check_task(family, task, local)
        if len(candidates) == 1:
            return candidates[0]
        raise
    if family != "auto" and told != family:
        raise ModelLoadError(f"{local} is a {told!r} model, not {family!r}")
    return check_task(told, task, local)


def _check_hub_model(location: str) -> None:
    from huggingface_hub import HfApi, constants

    repo = _repo(location)
    if _cached_file(repo, "config.json") is not None or _any_cached(repo):
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(f"model {location} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                             "download it first or give a local path")
    try:
        HfApi().model_info(repo, timeout=HUB_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any answer but a model info means it cannot load
        raise ModelLoadError(
            f"model {location} is not in the local cache and cannot be fetched from the Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "check the id or the network, or give a local path"
        ) from exc


def _hub_config(source: ModelSource) -> dict | None:
    """A Hub model's config.json (the cached copy, else that one file fetched), or None."""
    import json

    from huggingface_hub import hf_hub_download

    repo = _repo(source.location)
    if source.location != repo:
        return None  # hf://org/name/file.pth: one checkpoint file, told when it loads
    path = _cached_file(repo, "config.json")
    if path is None:
        try:
            path = hf_hub_download(repo, "config.json")
        except Exception:  # noqa: BLE001 - no config.json (a checkpoint-file repository)
            return None
    return json.loads(open(path).read())


def _repo(location: str) -> str:
    return "/".join(location.split("/")[:2])


def _cached_file(repo: str, name: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, name)
    return found if isinstance(found, str) else None


def _any_cached(repo: str) -> bool:
    from huggingface_hub import scan_cache_dir

    try:
        return any(r.repo_id == repo for r in scan_cache_dir().repos)
    except Exception:  # noqa: BLE001 - no cache folder yet
        return False
