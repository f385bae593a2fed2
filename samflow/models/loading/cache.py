"""Models from where users keep them: ``s3://`` and ``http(s)://`` model URIs, fetched once per node.

    local = fetch_model("s3://bucket/models/sam/", storage)          # HF-layout folder
    local = fetch_model("https://host/RealESRGAN_x4plus.pth#sha256=4fa0...", storage)

A remote URI is copied into a local cache (``$SAMFLOW_MODEL_CACHE``, default
``~/.cache/samflow/models``) under a folder named after the URI, and the local path (the file, or
the folder) is what the registry loads. A file lock per URI makes the actors of one node share a
single download: the first fetches, the others wait and reuse it. The copy is written to a
temporary folder and renamed into place only when complete (and verified), so a killed download
never looks finished. HTTPS uses the system's CA store, or the bundle ``SSL_CERT_FILE`` names.

A pin (``#sha256=<hex>`` at the end of the URI, or ``stages.<name>.model_sha256``) is
`checkpoint.sha256_pin`: a file's sha256, or for a folder the hash over every file in it (the
``model_sha256`` that ``samflow models check`` prints). A download that differs is deleted and
refused with :class:`ModelFetchError` (nothing is cached); a cached copy that differs (edited on
disk) is dropped and fetched again; a local file or folder that differs is refused. Hub ids,
``tiny://``, ``random://`` and ``torchvision://`` pass through unchanged and cannot be pinned.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from samflow.models.loading.checkpoint import sha256_pin
from samflow.models.loading.registry import REMOTE_SCHEMES, ModelLoadError, parse_uri

if TYPE_CHECKING:  # the run config (pydantic, every stage's section): only a remote fetch needs it
    from samflow.config import StorageConfig

CACHE_ENV = "SAMFLOW_MODEL_CACHE"
_MARKER = ".samflow-fetched.json"
_HTTP_TIMEOUT_S = 60
_CHUNK = 1 << 22


class ModelFetchError(ModelLoadError):
    """A remote model could not be fetched, or its bytes are not the expected ones."""


def is_remote(uri: str) -> bool:
    return uri.strip().lower().startswith(REMOTE_SCHEMES)


def split_fragment(uri: str) -> tuple[str, str | None]:
    """``("https://h/x.pth", "ab12...")`` for ``https://h/x.pth#sha256=ab12...``."""
    base, _, fragment = uri.strip().partition("#")
    if not fragment:
        return base, None
    key, _, value = fragment.partition("=")
    if key.lower() != "sha256" or not _is_hex64(value):
        raise ModelFetchError(f"{uri}: the URI fragment must be #sha256=<64 hex digits>")
    return base, value.lower()


def _is_hex64(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "samflow" / "models").expanduser()


def fetch_model(
    uri: str, storage: StorageConfig | None = None, sha256: str | None = None, cache_dir: str | Path | None = None
) -> str:
    """The local path to load ``uri`` from: remote URIs are fetched (once per cache), verified,
    and their cached path returned; a pinned local path is verified; any other URI comes back as
    it is. Raises ModelFetchError on a pin that does not match or cannot apply."""
    base, expected = split_pin(uri, sha256)
    if not is_remote(base):
        return _checked_local(base, expected)
    root = Path(cache_dir) if cache_dir else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(base.encode()).hexdigest()[:24]
    if storage is None:
        from samflow.config import StorageConfig

        storage = StorageConfig()
    with FileLock(str(root / f"{key}.lock")):
        return str(_cached_or_fetched(base, expected, root / key, storage))


def split_pin(uri: str, sha256: str | None = None) -> tuple[str, str | None]:
    """The URI without its ``#sha256=`` fragment, and the expected hash (fragment or config)."""
    uri = uri.strip()
    base, from_uri = split_fragment(uri) if is_remote(uri) or "#sha256=" in uri.lower() else (uri, None)
    if sha256 and not _is_hex64(sha256):
        raise ModelFetchError(f"model_sha256 {sha256!r} is not 64 hex digits")
    if sha256 and from_uri and sha256.lower() != from_uri:
        raise ModelFetchError(f"{uri}: the URI's #sha256 and the configured model_sha256 disagree")
    return base, (sha256 or from_uri or "").lower() or None


def _checked_local(base: str, expected: str | None) -> str:
    if expected is None:
        return base
    source = parse_uri(base)
    if source.kind != "local":
        raise ModelFetchError(
            f"{base}: a sha256 pin checks a model file or folder (a local path, s3:// or https://); "
            f"a {source.kind} model has none to check"
        )
    path = Path(source.location)
    if not path.exists():
        raise ModelFetchError(f"model {base} does not exist (a local path)")
    actual = sha256_pin(path)
    if actual != expected:
        raise ModelFetchError(f"refused {base}: its sha256 is {actual}, expected {expected} (the pinned model was changed)")
    return base


def _cached_or_fetched(base: str, expected: str | None, slot: Path, storage: StorageConfig) -> Path:
    marker = slot / _MARKER
    if marker.is_file():
        facts = json.loads(marker.read_text())
        local = slot / facts["name"]
        if expected is None or _hash_of(local) == expected:
            return local
        shutil.rmtree(slot)  # edited since it was fetched: fetch it again
    staging = Path(tempfile.mkdtemp(dir=slot.parent, prefix=f".{slot.name}.", suffix=".tmp"))
    try:
        name = _download(base, staging, storage)
        actual = _hash_of(staging / name)
        if expected is not None and actual != expected:
            raise ModelFetchError(
                f"refused {base}: its sha256 is {actual}, expected {expected} "
                "(the file was changed or is not the one named; nothing was cached)"
            )
        (staging / _MARKER).write_text(json.dumps({"uri": base, "name": name, "sha256": actual}))
        if slot.exists():
            shutil.rmtree(slot)
        os.replace(staging, slot)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return slot / name


def _hash_of(path: Path) -> str | None:
    return sha256_pin(path) if path.exists() else None


def _download(base: str, into: Path, storage: StorageConfig) -> str:
    """Copy ``base`` under ``into``; return the name of the file or folder it became."""
    try:
        if base.lower().startswith(("http://", "https://")):
            return _download_http(base, into)
        return _download_object_store(base, into, storage)
    except ModelFetchError:
        raise
    except Exception as exc:  # any transport failure is one user-facing error
        raise ModelFetchError(f"could not fetch {base}: {type(exc).__name__}: {exc}") from None


def _download_http(url: str, into: Path) -> str:
    name = _safe_name(url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]) or "model"
    request = urllib.request.Request(url, headers={"User-Agent": "samflow"})
    with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response, open(into / name, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)
    return name


def _download_object_store(uri: str, into: Path, storage: StorageConfig) -> str:
    from samflow.store.storage import filesystem  # fsspec loads only for a model in an object store

    fs, path = filesystem(uri, storage)
    name = _safe_name(path.rstrip("/").rsplit("/", 1)[-1]) or "model"
    if fs.isfile(path):
        fs.get_file(path, str(into / name))
        return name
    files = [p for p, info in fs.find(path, detail=True).items() if info.get("type") == "file"]
    if not files:
        raise ModelFetchError(f"{uri}: no such model file or folder")
    prefix = path.rstrip("/") + "/"
    for remote in files:
        relative = remote[len(prefix):]
        if not relative or relative.endswith("/"):
            continue  # folder markers some S3 tools write
        target = (into / name / relative).resolve()
        if not target.is_relative_to((into / name).resolve()):
            raise ModelFetchError(f"{uri}: object key {remote!r} escapes the model folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))
    return name


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")


def with_model_cache(stage_cls: type, storage: StorageConfig, sha256: str | None = None, model_field: str = "model") -> type:
    """``stage_cls`` whose constructor first resolves its config's ``model_field`` URI through the
    cache, on the node where the actor runs; the stage's class name (Ray Data's operator name) is
    kept, and its recorded model stays the URI the user gave."""

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        uri = getattr(config, model_field)
        local = fetch_model(uri, storage, sha256)
        stage_cls.__init__(self, config.model_copy(update={model_field: local}), *args, **kwargs)
        info = getattr(self, "info", None)
        if local != uri and isinstance(info, dict):
            info["model"] = uri

    return type(stage_cls.__name__, (stage_cls,), {"__init__": __init__, "__qualname__": f"cached.{stage_cls.__name__}"})
