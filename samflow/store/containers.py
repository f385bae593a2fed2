"""Containers (tar shards, Parquet files with image bytes) DST holds whole: every member a plan
listed in it was already done. A later plan does not open them again, as long as their size is
the one recorded (a container rewritten at another size is read anew; the listing gives sizes
only, so one rewritten at the very same size is not: WebDataset shards are written once, new data
comes in new shards).

    DST/_done/whole/containers.parquet   uri, size, members (key rows it had), one row a container

Found by a run's plan (never by `samflow plan`) from what it listed and what it found still to
do, recorded at the run's end (a re-run with nothing new writes nothing, and reads the headers
again); written whole, so a kill leaves the previous record. Losing it only costs a re-read.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from samflow.store.catalog import DONE, Catalog
from samflow.store.storage import cat_whole, put_whole

SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("members", pa.int64())])


def record_path(catalog: Catalog) -> str:
    return catalog.path(DONE, "whole", "containers.parquet")


def whole_containers(catalog: Catalog) -> dict[str, tuple[int, int]]:
    """``uri: (size, members)`` of the containers recorded whole."""
    try:
        data = cat_whole(catalog.fs, record_path(catalog))
    except FileNotFoundError:
        return {}
    rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    return {row["uri"]: (row["size"], row["members"]) for row in rows}


def skip_whole(files: list[tuple[str, int]], whole: dict[str, tuple[int, int]]) -> tuple[list[tuple[str, int]], int]:
    """``files`` less those recorded whole at their listed size, and the key rows those held."""
    kept = [(uri, size) for uri, size in files if whole.get(uri, (None, 0))[0] != size]
    skipped = sum(whole[uri][1] for uri, size in files if whole.get(uri, (None, 0))[0] == size)
    return kept, skipped


def record_whole(catalog: Catalog, known: dict[str, tuple[int, int]], found: dict[str, tuple[int, int]]) -> int:
    """Add ``found`` to the ``known`` record (one object, written whole); returns how many are new."""
    new = {uri: value for uri, value in found.items() if known.get(uri) != value}
    if not new:
        return 0
    merged = {**known, **new}
    uris = sorted(merged)
    table = pa.table({"uri": uris, "size": [merged[u][0] for u in uris], "members": [merged[u][1] for u in uris]},
                     schema=SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    put_whole(catalog.fs, record_path(catalog), buffer.getvalue())
    return len(new)
