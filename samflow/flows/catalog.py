"""The output store's layout and its commit protocol (exactly-once across kills and retries).

    DST/<table>/<shard>.parquet          committed shards (images, annotations, embeddings, errors)
    DST/_commits/<shard>.json            one marker per committed shard: its source URIs and rows
    DST/_staging/<run_id>/<table>/...    shards written by the pipeline, not yet committed
    DST/_runs/<run_id>.json              run manifest

A shard is committed by moving its staged files into place and then writing its marker; the marker
is the commit point. Table files without a marker (a run killed between the two) are removed before
the next run plans, so their items are simply processed again. Shard names are a hash of the URIs
they hold, so a retried write task overwrites its own staged files instead of adding new ones.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from samflow.flows.config import StorageConfig
from samflow.flows.storage import filesystem
from samflow.schemas.tables import TABLES

COMMITS = "_commits"
STAGING = "_staging"
RUNS = "_runs"


@dataclass
class ShardResult:
    """What one write task staged: returned through Ray Data to the driver, which commits it."""

    shard: str
    uris: list[str]
    rows: dict[str, int] = field(default_factory=dict)


class Catalog:
    def __init__(self, dst: str, storage: StorageConfig) -> None:
        self.fs, self.root = filesystem(dst, storage)
        self.dst = dst

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def staged_path(self, run_id: str, table: str, shard: str) -> str:
        return self.path(STAGING, run_id, table, f"{shard}.parquet")

    def committed_shards(self) -> dict[str, dict]:
        """Marker contents by shard name."""
        markers = self._ls(self.path(COMMITS), suffix=".json")
        if not markers:
            return {}
        blobs = self.fs.cat(markers)
        return {
            posixpath.basename(p)[: -len(".json")]: json.loads(blobs[p]) for p in markers
        }

    def done_uris(self, shards: dict[str, dict]) -> set[str]:
        return {uri for marker in shards.values() for uri in marker["uris"]}

    def remove_uncommitted(self, shards: dict[str, dict]) -> list[str]:
        """Delete table files of shards that never got a marker, and stale staging folders."""
        removed = []
        for table in TABLES:
            for path in self._ls(self.path(table), suffix=".parquet"):
                if posixpath.basename(path)[: -len(".parquet")] not in shards:
                    self.fs.rm(path)
                    removed.append(path)
        if self.fs.exists(self.path(STAGING)):
            self.fs.rm(self.path(STAGING), recursive=True)
        return removed

    def commit(self, run_id: str, result: ShardResult) -> None:
        for table, count in result.rows.items():
            if count:
                final = self.path(table, f"{result.shard}.parquet")
                self.fs.makedirs(self.path(table), exist_ok=True)
                self.fs.mv(self.staged_path(run_id, table, result.shard), final)
        marker = {"shard": result.shard, "run_id": run_id, "uris": result.uris, "rows": result.rows}
        self.write_json(self.path(COMMITS, f"{result.shard}.json"), marker)

    def write_json(self, path: str, payload: dict) -> None:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.fs.open(path, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)

    def finish_run(self, run_id: str) -> None:
        staging = self.path(STAGING, run_id)
        if self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)

    def _ls(self, folder: str, suffix: str) -> list[str]:
        self.fs.invalidate_cache(folder)
        try:
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(p for p in entries if p.endswith(suffix))


    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table | None:
        """All committed rows of one output table, or None when it has none."""
        committed = self.committed_shards()
        paths = [
            p for p in self._ls(self.path(table), suffix=".parquet")
            if posixpath.basename(p)[: -len(".parquet")] in committed
        ]
        if not paths:
            return None
        return pa.concat_tables(
            [pq.read_table(p, filesystem=self.fs, columns=columns) for p in paths]
        )
