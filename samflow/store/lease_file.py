"""The lease object's storage: atomic create, compare-and-swap and compare-and-delete.

Every write names the version it expects (a *token*), so of two runs acting on the same lease
exactly one succeeds:

- S3: conditional requests. ``If-None-Match: *`` creates only when no object exists; ``If-Match:
  <ETag>`` replaces or deletes only the version that was read.
- Local paths: an exclusive lock (``flock``) on DST's folder around each read-check-write; the
  lease is created with ``O_CREAT | O_EXCL`` and replaced by a rename, so a reader never sees half
  a file. The token is the file's bytes (each write names its owner and time).
- Other fsspec stores (no conditional writes): check, write, then read back; not atomic.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Protocol

import fsspec
from fsspec.asyn import sync
from fsspec.implementations.local import LocalFileSystem

from samflow.store.storage import put_whole

Token = str | bytes


class LeaseFile(Protocol):
    def read(self) -> tuple[bytes, Token] | None:
        """The lease's bytes and version, or None when there is no lease."""

    def create(self, data: bytes) -> Token | None:
        """Write ``data`` if no lease exists; its new token, or None when one exists."""

    def replace(self, data: bytes, expected: Token) -> Token | None:
        """Write ``data`` if the lease is still at version ``expected``; its new token, or None."""

    def delete(self, expected: Token) -> bool:
        """Remove the lease if it is still at version ``expected``."""


def lease_file(fs: fsspec.AbstractFileSystem, path: str) -> LeaseFile:
    """The lease at ``path`` in ``fs``, by the strongest means the store offers."""
    if isinstance(fs, LocalFileSystem):
        return LocalLeaseFile(path)
    if "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return S3LeaseFile(fs, path)
    return PlainLeaseFile(fs, path)


class LocalLeaseFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.folder = os.path.dirname(path)

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _bytes(self) -> bytes | None:
        try:
            with open(self.path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def read(self) -> tuple[bytes, Token] | None:
        with self._locked(fcntl.LOCK_SH):
            data = self._bytes()
        return None if data is None else (data, data)

    def create(self, data: bytes) -> Token | None:
        with self._locked(fcntl.LOCK_EX):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        return data

    def replace(self, data: bytes, expected: Token) -> Token | None:
        with self._locked(fcntl.LOCK_EX):
            if self._bytes() != expected:
                return None
            put_whole(LocalFileSystem(), self.path, data)
        return data

    def delete(self, expected: Token) -> bool:
        with self._locked(fcntl.LOCK_EX):
            if self._bytes() != expected:
                return False
            os.unlink(self.path)
        return True


class S3LeaseFile:
    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs = fs
        self.bucket, _, self.key = path.partition("/")

    def read(self) -> tuple[bytes, Token] | None:
        try:
            return sync(self.fs.loop, self._get)
        except FileNotFoundError:
            return None

    async def _get(self) -> tuple[bytes, Token]:
        response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
        async with response["Body"] as body:
            return await body.read(), response["ETag"]

    def _put(self, data: bytes, **condition: str) -> Token | None:
        try:
            response = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except OSError as exc:
            if _lost_condition(exc):
                return None
            raise
        return response["ETag"]

    def create(self, data: bytes) -> Token | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, expected: Token) -> Token | None:
        return self._put(data, IfMatch=str(expected))

    def delete(self, expected: Token) -> bool:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=str(expected))
        except OSError as exc:
            if _lost_condition(exc):
                return False
            raise
        return True


def _lost_condition(exc: BaseException) -> bool:
    """Whether S3 refused a conditional request because the object is not the expected version:
    412 PreconditionFailed, 409 ConditionalRequestConflict (a concurrent conditional write won),
    or NoSuchKey for an If-Match on an object that is gone (not NoSuchBucket: that is an error)."""
    for found in (exc, exc.__cause__):
        response = getattr(found, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (409, 412)
    return isinstance(exc, FileExistsError)


class PlainLeaseFile:
    """Stores without conditional writes: write, wait ``settle_s``, read back."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, settle_s: float = 0.5) -> None:
        self.fs = fs
        self.path = path
        self.settle_s = settle_s

    def read(self) -> tuple[bytes, Token] | None:
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, data

    def _write_checked(self, data: bytes) -> Token | None:
        put_whole(self.fs, self.path, data)
        time.sleep(self.settle_s)
        current = self.read()
        return data if current is not None and current[0] == data else None

    def create(self, data: bytes) -> Token | None:
        return None if self.read() is not None else self._write_checked(data)

    def replace(self, data: bytes, expected: Token) -> Token | None:
        current = self.read()
        return None if current is None or current[1] != expected else self._write_checked(data)

    def delete(self, expected: Token) -> bool:
        current = self.read()
        if current is None or current[1] != expected:
            return False
        self.fs.rm(self.path)
        return True
