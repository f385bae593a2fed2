"""WebDataset tar shards: each image member is an item, ``uri = <tar uri>#<member>``; other
members (``.json``, ``.txt``, ...) are sidecars, not items (SA-1B's ``sa_N.jpg`` + ``sa_N.json``
tars included). A sample's ``.json`` sidecar (same sample key) travels with its image as
``meta_json`` to the ``images`` table."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from samflow.config import StorageConfig
from samflow.inputs.formats import (
    TAR_SUFFIXES,
    InputFormatError,
    is_image,
    item_row,
    key_row,
    keys_table,
    sample_key,
)
from samflow.store.storage import filesystem, open_file

SIDECAR_SUFFIX = ".json"
_SCAN_BLOCK = 64 * 1024  # read-ahead while scanning tar headers (a seek skips the member data)


def check(uris: list[str]) -> None:
    bad = [uri for uri in uris if not uri.lower().endswith(TAR_SUFFIXES)]
    if bad:
        raise InputFormatError(f"--input-format webdataset: {bad[0]} is not a tar shard")


class TarKeys:
    """Key rows of one tar shard's image members, from its headers (member data is skipped by
    seeking). A shard that cannot be read to its end adds one error row for the tar."""

    def __init__(self, storage: StorageConfig) -> None:
        self.storage = storage

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for tar_uri in batch.column("uri").to_pylist():
            rows.extend(self._members(tar_uri))
        return keys_table(rows)

    def _members(self, tar_uri: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        try:
            fs, path = filesystem(tar_uri, self.storage)
            with fs.open(path, "rb", block_size=_SCAN_BLOCK) as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
                for member in tar:
                    if member.isfile() and is_image(member.name):
                        rows.append(key_row(f"{tar_uri}#{member.name}", tar_uri, member.size))
                if tar_uri.lower().endswith(".tar"):
                    _check_tail(fh, tar.offset)
        except Exception as exc:  # noqa: BLE001 - a broken shard is an error row, not a failed run
            rows.append(key_row(tar_uri, tar_uri, 0, "corrupt_tar", _tar_error(exc, len(rows))))
        return rows


def _check_tail(fh: Any, end: int) -> None:
    """tarfile stops quietly at a header it cannot parse; only zero padding may follow the
    last member of a whole tar."""
    left = fh.size - end
    if left > tarfile.RECORDSIZE:
        raise tarfile.ReadError(f"{left:,} bytes after byte {end:,} are not a tar member header")
    fh.seek(end)
    if fh.read(left).strip(b"\0"):
        raise tarfile.ReadError(f"garbage after byte {end:,} instead of a tar member header")


def _tar_error(exc: BaseException, read: int) -> str:
    return f"tar shard unreadable after {read} image members: {type(exc).__name__}: {exc}"


def tar_members(
    tar_uri: str, wanted: dict[str, Any], storage: StorageConfig
) -> Iterator[tuple[str, bytes, bytes | None]]:
    """(key, bytes, sidecar JSON bytes or None) of each wanted member, in one streaming pass.
    A sample's members lie together in a WebDataset tar, so its images wait only until the
    next sample starts, for a sidecar that may follow them."""
    samples = {sample_key(key.partition("#")[2]) for key in wanted}
    current, images, sidecar = None, [], None
    try:
        with open_file(tar_uri, storage) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for member in tar:  # streaming: one pass, no seeks
                if not member.isfile():
                    continue
                sample = sample_key(member.name)
                if sample != current:
                    yield from ((key, data, sidecar) for key, data in images)
                    current, images, sidecar = sample, [], None
                key = f"{tar_uri}#{member.name}"
                if key in wanted:
                    images.append((key, _read_member(tar, member)))
                elif sample in samples and member.name.lower().endswith(SIDECAR_SUFFIX):
                    sidecar = _read_member(tar, member)
    except Exception:
        # A tar cut after a whole sample keeps it: its images were read before the damage.
        yield from ((key, data, sidecar) for key, data in images)
        raise
    yield from ((key, data, sidecar) for key, data in images)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    extracted = tar.extractfile(member)
    return extracted.read() if extracted else b""


def with_sidecar(uri: str, data: bytes, sidecar: bytes | None) -> dict[str, Any]:
    """The item, its sidecar's JSON text attached; a sidecar that is not JSON fails the item
    (it would go to the images table as JSON)."""
    if sidecar is None:
        return item_row(uri, data)
    try:
        text = sidecar.decode("utf-8")
        json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
        return item_row(uri, None, "bad_sidecar", f"its {SIDECAR_SUFFIX} sidecar is not JSON: {exc}")
    return item_row(uri, data, meta_json=text)
