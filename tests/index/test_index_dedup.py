"""samflow dedup on synthetic committed shards with planted duplicates (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from samflow.index.commands import dedup
from samflow.index.dedup import DedupParams
from tests.helpers.index_data import clustered, write_image_shard

DIM = 32


def test_dedup_finds_planted_duplicates_and_keeps_one_of_each(tmp_path):
    rng = np.random.default_rng(0)
    base = clustered(300, DIM, seed=11, clusters=5, spread=0.8)
    groups = [list(range(g * 10, g * 10 + 3)) for g in range(20)]  # rows 0-2, 10-12, ...: near copies
    vectors = base.copy()
    for group in groups:
        for row in group[1:]:
            noise = rng.standard_normal(DIM).astype(np.float32)
            vectors[row] = vectors[group[0]] + 0.05 * noise / np.linalg.norm(noise)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # Files: every image its own bytes, except five pairs of byte-identical files (different vectors).
    files = tmp_path / "src"
    files.mkdir()
    byte_pairs = [(250 + 2 * i, 251 + 2 * i) for i in range(5)]
    uris = []
    for row in range(300):
        source = next((a for a, b in byte_pairs if b == row), row)
        path = files / f"img-{row:04d}.jpg"
        path.write_bytes(f"image bytes of {source}".encode() * 10)
        uris.append(str(path))
    dst = str(tmp_path / "run")
    write_image_shard(dst, "a", vectors[:150], first=0, uris=uris[:150])
    write_image_shard(dst, "b", vectors[150:], first=150, uris=uris[150:])

    summary = dedup(dst, threshold=0.95, params=DedupParams(cluster_size=50, block_rows=7))
    assert summary["byte_duplicates"] == 5 and summary["clusters"] == 6
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "run/dedup/image.parquet").to_pylist()}
    assert sorted(rows) == list(range(300))
    for group in groups:
        kept = [row for row in group if rows[row]["keep"]]
        assert len(kept) == 1, (group, [rows[r] for r in group])
        for row in group:
            assert rows[row]["max_sim"] >= 0.95
            if row != kept[0]:
                assert rows[row]["nearest_kept_id"] == kept[0]
                assert rows[row]["cluster"] == rows[kept[0]]["cluster"]
    for a, b in byte_pairs:
        assert rows[a]["keep"] and not rows[b]["keep"]
        assert rows[b]["nearest_kept_id"] == a and rows[b]["max_sim"] == 1.0
    dropped = {i for i, r in rows.items() if not r["keep"]}
    in_groups = {row for group in groups for row in group}
    assert dropped <= in_groups | {b for _, b in byte_pairs}  # nothing else is a duplicate
    assert len(dropped) == 2 * len(groups) + len(byte_pairs)
    assert all(r["nearest_kept_id"] is None for r in rows.values() if r["keep"])
    assert summary["kept"] == 300 - len(dropped)
