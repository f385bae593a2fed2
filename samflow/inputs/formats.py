"""What every input format shares: the format names (declared here once), file suffixes, and the
two row shapes formats hand on, *key rows* for planning and *item rows* for decode.

Light on purpose (pyarrow only): the config and the command line import the format names.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa

from samflow.schemas.ids import ID_KEY_PREFIX

INPUT_FORMATS = ("auto", "files", "manifest", "webdataset", "parquet")
LOOSE_FORMATS = ("files", "manifest")  # items read by decode itself, one URI each

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".ts", ".mpg", ".mpeg", ".flv",
                  ".ogv", ".wmv", ".asf", ".y4m")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CONTAINER_SUFFIXES = (*TAR_SUFFIXES, ".parquet")

# A key row per item. ``key``: what the done-set holds (``samflow.schemas.ids.item_key``: the
# URI, or a manifest's id); ``container``: the tar or Parquet file the item lives in ("" for
# loose files and manifest entries); ``uri``: where the item is read; ``source_id``: the
# manifest's id ("" when none). A key row with an error (a corrupt tar) becomes an error row.
KEY_SCHEMA = pa.schema([
    ("key", pa.string()), ("container", pa.string()), ("size", pa.int64()),
    ("error_type", pa.string()), ("error_message", pa.string()),
    ("uri", pa.string()), ("source_id", pa.string()),
])
# An item row per input decode reads: ``data`` holds a container member's bytes (null for a
# loose file, which decode reads itself); ``meta_json`` the item's sidecar JSON text ("" when it
# has none), for the images table.
ITEM_SCHEMA = pa.schema([
    ("uri", pa.string()), ("size", pa.int64()), ("data", pa.binary()),
    ("error_type", pa.string()), ("error_message", pa.string()), ("meta_json", pa.string()),
    ("source_id", pa.string()),
])


class InputFormatError(ValueError):
    """The source is not what its (given or detected) format needs: a user mistake."""


def key_row(key: str, container: str, size: int = 0, error_type: str = "", message: str = "") -> dict[str, Any]:
    return {"key": key, "container": container, "size": int(size), "error_type": error_type,
            "error_message": message, "uri": key, "source_id": ""}


def keys_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=KEY_SCHEMA)


def item_row(
    uri: str, data: bytes | None, error_type: str = "", message: str = "", meta_json: str = ""
) -> dict[str, Any]:
    return {"uri": uri, "size": len(data) if data is not None else 0, "data": data,
            "error_type": error_type, "error_message": message, "meta_json": meta_json, "source_id": ""}


def suffix(uri: str) -> str:
    return posixpath.splitext(uri.lower())[1]


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not posixpath.basename(name).startswith(".")


def sample_key(path: str) -> str:
    """WebDataset's sample key: the path up to the first dot of its file name (``d/sa_1.jpg``
    and ``d/sa_1.json`` are one sample)."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, name.split(".", 1)[0])


def container_of(key: str) -> str:
    """The tar or Parquet file an item key lives in ("" for a loose file or manifest entry)."""
    head, sep, _ = key.partition("#")
    inside = sep and head.lower().endswith(CONTAINER_SUFFIXES) and not key.startswith(ID_KEY_PREFIX)
    return head if inside else ""
