"""Storage: URIs, listing with globs, byte I/O, type sniffing; local and a real S3 protocol server."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samflow.config import InputConfig, StorageConfig
from samflow.media.filetypes import sniff_kind
from samflow.store.storage import (
    filesystem,
    join,
    list_files,
    read_bytes,
    read_head,
    selected,
    write_bytes,
)

DEFAULT_INCLUDE = InputConfig().include
DEFAULT_EXCLUDE = InputConfig().exclude

# Relative path -> content; hidden files and `_`-prefixed folders are skipped by default.
TREE = {
    "a.jpg": b"1",
    "b.png": b"22",
    "sub/c.jpg": b"333",
    "sub/deeper/d.webp": b"4444",
    "sub/.hidden.jpg": b"x",
    ".cache/e.jpg": b"x",
    "_gt/a.masks.npz": b"x",
    "sub/_gt/c.masks.npz": b"x",
    "video/clip.mp4": b"55555",
}
VISIBLE = ["a.jpg", "b.png", "sub/c.jpg", "sub/deeper/d.webp", "video/clip.mp4"]


def _encoded(fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _write_tree(root: str, storage: StorageConfig) -> None:
    for rel, data in TREE.items():
        write_bytes(join(root, rel), data, storage)


# --- sniffing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tiff"), ("BMP", "bmp"), ("GIF", "gif")],
)
def test_sniff_images_written_by_pillow(fmt: str, kind: str) -> None:
    assert sniff_kind(_encoded(fmt)[:64]) == kind


def test_sniff_big_endian_tiff_and_containers() -> None:
    assert sniff_kind(b"MM\x00*\x00\x00\x00\x08") == "tiff"
    assert sniff_kind(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom") == "mp4"
    assert sniff_kind(b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ") == "mov"
    assert sniff_kind(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1") == "avif"
    assert sniff_kind(b"RIFF\x00\x10\x00\x00AVI LIST") == "avi"
    assert sniff_kind(b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x84webm") == "webm"
    assert sniff_kind(b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska") == "mkv"


def test_sniff_unknown_and_lookalikes() -> None:
    assert sniff_kind(b"") is None
    assert sniff_kind(b"hello world, this is text") is None
    assert sniff_kind(b"BMW is a car, not a bitmap at all....") is None  # 'BM' alone is not enough
    assert sniff_kind(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None  # RIFF audio, not WebP


# --- join / filesystem -------------------------------------------------------------------------


def test_join_keeps_scheme_and_normalises_slashes() -> None:
    assert join("s3://bucket", "a", "b.jpg") == "s3://bucket/a/b.jpg"
    assert join("s3://bucket/prefix/", "/a/", "b.jpg") == "s3://bucket/prefix/a/b.jpg"
    assert join("file:///data/x", "y") == "file:///data/x/y"
    assert join("/data/x", "y", "z.png") == "/data/x/y/z.png"
    assert join("s3://bucket/p") == "s3://bucket/p"


def test_filesystem_local_forms_give_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for uri in ("rel/dir", f"file://{tmp_path}/rel/dir", str(tmp_path / "rel" / "dir")):
        fs, path = filesystem(uri, StorageConfig())
        assert fs.protocol[0] in ("file", "local") and path == str(tmp_path / "rel" / "dir")


def test_endpoint_from_config_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:9000")
    fs, path = filesystem("s3://bucket/key", StorageConfig(endpoint_url="http://from-config:9000"))
    assert fs.endpoint_url == "http://from-config:9000" and path == "bucket/key"
    fs, _ = filesystem("s3://bucket/key", StorageConfig())
    assert fs.endpoint_url == "http://from-env:9000"


# --- globs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "include", "exclude", "expected"),
    [
        ("a.jpg", ["**"], [], True),
        ("x/y/a.jpg", ["**/*.jpg"], [], True),
        ("a.jpg", ["**/*.jpg"], [], True),  # `**/` matches zero directories too
        ("x/a.jpg", ["*.jpg"], [], False),  # `*` stays within one segment
        ("x/a.jpg", ["x"], [], True),  # a pattern naming a folder selects what is inside it
        ("_gt/a.npz", ["**"], ["**/_*"], False),
        ("x/_gt/deep/a.npz", ["**"], ["**/_*"], False),
        ("x/a_b.jpg", ["**"], ["**/_*"], True),
        ("x/.git/config", ["**"], ["**/.*"], False),
        ("img01.png", ["img0?.png"], [], True),
        ("img10.png", ["img0[0-9].png"], [], False),
        ("img10.png", ["img[!0]0.png"], [], True),
    ],
)
def test_glob_semantics(rel: str, include: list[str], exclude: list[str], expected: bool) -> None:
    assert selected(rel, include, exclude) is expected


# --- local listing and I/O ---------------------------------------------------------------------


def test_list_local_default_globs(tmp_path: Path) -> None:
    _write_tree(str(tmp_path), StorageConfig())
    listed = list_files(str(tmp_path), StorageConfig(), DEFAULT_INCLUDE, DEFAULT_EXCLUDE)
    assert listed == [(str(tmp_path / rel), len(TREE[rel])) for rel in sorted(VISIBLE)]


def test_list_file_uri_gives_absolute_paths_and_filters(tmp_path: Path) -> None:
    _write_tree(str(tmp_path), StorageConfig())
    listed = list_files(f"file://{tmp_path}/sub", StorageConfig(), ["**/*.jpg", "**/*.webp"], ["deeper", "**/.*"])
    assert listed == [(str(tmp_path / "sub" / "c.jpg"), 3)]


def test_list_single_file_and_missing_source(tmp_path: Path) -> None:
    _write_tree(str(tmp_path), StorageConfig())
    single = str(tmp_path / "sub" / "c.jpg")
    assert list_files(single, StorageConfig(), ["*.png"], []) == [(single, 3)]
    with pytest.raises(FileNotFoundError):
        list_files(str(tmp_path / "nope"), StorageConfig(), DEFAULT_INCLUDE, DEFAULT_EXCLUDE)


def test_local_write_creates_parents_atomically(tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "z.bin"
    write_bytes(str(target), b"first", StorageConfig())
    write_bytes(f"file://{target}", b"second", StorageConfig())
    assert read_bytes(str(target), StorageConfig()) == b"second"
    assert read_head(str(target), StorageConfig(), 3) == b"sec"
    assert os.listdir(target.parent) == ["z.bin"]  # no temporary files left behind


# --- S3 (moto server) --------------------------------------------------------------------------


def test_s3_list_read_write(s3_bucket: str) -> None:
    storage = StorageConfig()
    root = join(s3_bucket, "dataset")
    _write_tree(root, storage)
    write_bytes(join(s3_bucket, "dataset2", "sibling.jpg"), b"not under dataset/", storage)

    for src in (root, root + "/"):
        listed = list_files(src, storage, DEFAULT_INCLUDE, DEFAULT_EXCLUDE)
        assert listed == [(f"{root}/{rel}", len(TREE[rel])) for rel in sorted(VISIBLE)]
    assert read_bytes(f"{root}/sub/deeper/d.webp", storage) == b"4444"
    assert read_head(f"{root}/sub/deeper/d.webp", storage, 2) == b"44"
    jpgs = list_files(s3_bucket, storage, ["**/*.jpg"], DEFAULT_EXCLUDE)
    assert [uri for uri, _ in jpgs] == [
        f"{root}/a.jpg", f"{root}/sub/c.jpg", f"{s3_bucket}/dataset2/sibling.jpg"
    ]


def test_s3_single_object_and_overwrite(s3_bucket: str) -> None:
    storage = StorageConfig()
    uri = join(s3_bucket, "one", "image.png")
    write_bytes(uri, b"v1", storage)
    write_bytes(uri, b"version2", storage)
    assert list_files(uri, storage, DEFAULT_INCLUDE, DEFAULT_EXCLUDE) == [(uri, 8)]


def test_s3_endpoint_from_config_only(s3_bucket: str, s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    storage = StorageConfig(endpoint_url=s3_server, region="us-east-1")
    uri = join(s3_bucket, "cfg.bin")
    write_bytes(uri, b"through config", storage)
    assert read_bytes(uri, storage) == b"through config"


def test_s3_missing_object_raises_file_not_found(s3_bucket: str) -> None:
    with pytest.raises(FileNotFoundError):
        read_bytes(join(s3_bucket, "absent.jpg"), StorageConfig())
