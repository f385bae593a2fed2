"""Storage behind one kind of name, the URI: local paths, ``file://`` and ``s3://`` (via fsspec).

S3 settings come from :class:`StorageConfig` (endpoint, region, anonymous access) or the standard
``AWS_ENDPOINT_URL``; credentials only ever come from the environment / the AWS credential chain
that botocore walks, never from samflow's config, and are never logged.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import IO

import fsspec
import pathspec
from fsspec.implementations.local import LocalFileSystem

from samflow.config import StorageConfig

_LOCAL_PROTOCOLS = ("", "file", "local")


def _split(uri: str) -> tuple[str, str]:
    """``("s3", "bucket/key")`` for ``s3://bucket/key``; ``("", path)`` for a plain path."""
    if "://" in uri:
        protocol, rest = uri.split("://", 1)
        return protocol.lower(), rest
    return "", uri


def _s3_options(storage: StorageConfig) -> dict:
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    client_kwargs = {"region_name": storage.region} if storage.region else {}
    return {
        "anon": storage.anon,
        "endpoint_url": endpoint,
        "client_kwargs": client_kwargs,
        # A run lists after it writes (incremental runs, commits): never answer from a stale cache.
        "use_listings_cache": False,
        "config_kwargs": _retry_options(storage),
    }


def _retry_options(storage: StorageConfig) -> dict:
    """botocore's retry policy and timeouts from ``storage.retries``: throttling (SlowDown, 503)
    and transient faults (5xx, connection resets, timeouts) are retried with backoff, permanent
    errors (403, 404) fail at once."""
    retries = storage.retries
    return {
        "retries": {"max_attempts": retries.max_attempts, "mode": retries.mode},
        "connect_timeout": retries.connect_timeout_s,
        "read_timeout": retries.read_timeout_s,
    }


def filesystem(uri: str, storage: StorageConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that holds ``uri`` and the path within it (no protocol).

    Local paths come back absolute. Other fsspec protocols (``memory://``, ``gs://``, ...) work
    with their defaults.
    """
    protocol, path = _split(uri)
    if protocol in _LOCAL_PROTOCOLS:
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    if protocol in ("s3", "s3a"):
        return fsspec.filesystem("s3", **_s3_options(storage)), path.rstrip("/")
    fs = fsspec.filesystem(protocol)
    return fs, fs._strip_protocol(uri)


def _to_uri(protocol: str, path: str) -> str:
    """A path inside a filesystem back to a full URI in the source's scheme."""
    if protocol in _LOCAL_PROTOCOLS:
        return path
    if protocol == "s3a":
        protocol = "s3"
    return f"{protocol}://{path.lstrip('/')}"


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI, keeping its scheme: ``join("s3://b/x", "y", "z.png")``.

    Parts are always relative: a leading ``/`` on a part does not reset the path.
    """
    protocol, path = _split(uri)
    cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
    if protocol in _LOCAL_PROTOCOLS:
        joined = os.path.join(path, *cleaned) if cleaned else path
        return f"{protocol}://{joined}" if protocol else joined
    joined = posixpath.join(path.rstrip("/"), *cleaned) if cleaned else path
    return f"{protocol}://{joined}"


@lru_cache(maxsize=256)
def _spec(patterns: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    """gitignore's glob rules, every pattern anchored at the listing root (``*`` stays within
    one segment, ``**/`` matches zero or more folders, a pattern naming a folder covers what is
    inside it, ``!`` re-includes)."""
    return pathspec.GitIgnoreSpec.from_lines(_anchored(p) for p in patterns)


def _anchored(pattern: str) -> str:
    negated = pattern.startswith("!")
    body = pattern[1:] if negated else pattern
    return ("!" if negated else "") + "/" + body.lstrip("/")


def selected(rel_path: str, include: list[str], exclude: list[str]) -> bool:
    """Whether a path relative to the listing root passes the include and exclude globs."""
    return _spec(tuple(include)).match_file(rel_path) and not _spec(tuple(exclude)).match_file(rel_path)


def absolute(uri: str) -> str:
    """A local path made absolute (``~`` expanded, ``file://`` dropped); other URIs as they are.
    Ray workers, a job on a cluster and a deployment's later runs each start in a folder of their
    own, so a path relative to the command's folder would name another place there."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def absolute_uri(uri: str, storage: StorageConfig) -> str:
    """``uri`` as :func:`list_files` names what it lists: local paths absolute (``file://``
    dropped), object-store keys with their scheme and no trailing slash."""
    protocol, _ = _split(uri)
    _, path = filesystem(uri, storage)
    return _to_uri(protocol, path)


def list_files(
    src: str, storage: StorageConfig, include: list[str], exclude: list[str]
) -> list[tuple[str, int]]:
    """Every file under ``src`` (recursively) that passes the globs, as sorted ``(uri, size)``.

    URIs are in ``src``'s scheme (``s3://bucket/key``; absolute paths for local sources). A
    ``src`` that is a single file is returned as is: naming one file selects it.
    """
    protocol, _ = _split(src)
    fs, root = filesystem(src, storage)
    if fs.isfile(root):
        return [(_to_uri(protocol, root), int(fs.size(root)))]
    found = fs.find(root, detail=True)
    if not found and not fs.exists(root):
        raise FileNotFoundError(f"source not found: {src}")
    prefix = root.rstrip("/") + "/"
    files = []
    for path, info in found.items():
        if info.get("type") != "file" or path.endswith("/"):
            continue  # directory markers some S3 tools write
        rel = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        if selected(rel, include, exclude):
            files.append((_to_uri(protocol, path), int(info.get("size") or 0)))
    return sorted(files)


def read_bytes(uri: str, storage: StorageConfig) -> bytes:
    fs, path = filesystem(uri, storage)
    return fs.cat_file(path)


def cat_whole(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """A whole object in one GET: a read from byte 0 spares s3fs its size request (asked to
    split large reads into parallel ranges)."""
    return fs.cat_file(path, start=0)


def open_file(uri: str, storage: StorageConfig) -> IO[bytes]:
    """A seekable binary file object (ranged reads on object stores) for streaming readers."""
    fs, path = filesystem(uri, storage)
    return fs.open(path, "rb")


def read_head(uri: str, storage: StorageConfig, n: int = 64) -> bytes:
    """The first ``n`` bytes (a ranged read on object stores), e.g. to sniff the file type."""
    fs, path = filesystem(uri, storage)
    return fs.cat_file(path, start=0, end=n)


def write_bytes(uri: str, data: bytes, storage: StorageConfig) -> None:
    """Write a whole object (see :func:`put_whole`)."""
    fs, path = filesystem(uri, storage)
    put_whole(fs, path, data)


def put_whole(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` whole or not at all, so a killed run never leaves a
    half-written file under the final name. Local writes create parents and go through a hidden
    temporary (``.<name>.<random>.tmp``) in the same folder and a rename; object-store PUTs
    already are all or nothing."""
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class StorageSource:
    """Storage as stages see it (samflow.actors.stage.ByteStore): bytes by URI with this run's
    storage settings."""

    storage: StorageConfig

    def read(self, uri: str) -> bytes:
        return read_bytes(uri, self.storage)

    def read_head(self, uri: str, n: int) -> bytes:
        return read_head(uri, self.storage, n)

    def open(self, uri: str) -> IO[bytes]:
        return open_file(uri, self.storage)

    def write(self, uri: str, data: bytes) -> None:
        write_bytes(uri, data, self.storage)
