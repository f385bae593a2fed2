"""Loose files: a folder or prefix of image and video files, listed on the driver; decode reads
each one by its URI."""

from __future__ import annotations

import pyarrow as pa
import ray

from samflow.inputs.formats import key_row, keys_table


def key_dataset(files: list[tuple[str, int]]) -> ray.data.Dataset:
    """A key row per listed ``(uri, size)``."""
    rows = [key_row(uri, "", size) for uri, size in files]
    return ray.data.from_items(rows, override_num_blocks=max(1, min(200, len(rows) // 50_000 + 1)))


def key_table(files: list[tuple[str, int]]) -> pa.Table:
    """The same key rows, as a table held here (a plan made in this process)."""
    return keys_table([key_row(uri, "", size) for uri, size in files])
