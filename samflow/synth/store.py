"""Where a synth run's output lives, and its commit protocol (annotate's, with tars).

    SYN/<shard>.tar                    committed WebDataset shards in SA-1B's layout
    SYN/_candidates/<shard>.parquet    every candidate of the shard, kept or dropped: scores, reason
    SYN/_commits/<shard>.json          the commit point: the candidate keys the shard settles
    SYN/_staging/<run_id>/...          written by the pipeline, not yet committed
    SYN/_conditions/<key>.png          condition maps (``synth.save_conditions``)
    SYN/_runs/<run_id>.json            run manifest

Underscore folders are not inputs to ``samflow annotate SYN`` (its default excludes), so SYN
reads back as tars alone. A marker lists dropped candidates too: a re-run does not try them
again. Tars and candidate files without a marker (a run killed between the move and the marker)
are removed before the next run plans, found by the intent the commit records before its moves
(samflow/store/catalog.py), so that costs what killed runs left, not the output's history.
"""

from __future__ import annotations

import posixpath

from samflow.config import StorageConfig
from samflow.store.catalog import COMMITS, TABLE_FILES, Catalog

CANDIDATES = "_candidates"
CONDITIONS = "_conditions"
TAR = ".tar"


class SynthStore:
    def __init__(self, syn: str, storage: StorageConfig) -> None:
        self.catalog = Catalog(syn, storage)
        self.fs = self.catalog.fs

    def staged(self, run_id: str, name: str) -> str:
        return self.catalog.path("_staging", run_id, name)

    def put_staged(self, run_id: str, name: str, data: bytes) -> None:
        path = self.staged(run_id, name)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.pipe_file(path, data)

    def put_condition(self, key: str, data: bytes) -> None:
        path = self.catalog.path(CONDITIONS, f"{key}.png")
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.pipe_file(path, data)

    def done_keys(self) -> set[str]:
        return self.catalog.done_uris(self.catalog.committed_shards())

    def clean(self) -> list[str]:
        """Remove what no marker commits (and staging); returns the removed paths."""
        # An output written before intents is swept once, its tars and candidates with the tables.
        sweep = (*TABLE_FILES, ("", TAR), (CANDIDATES, ".parquet"))
        return self.catalog.remove_uncommitted(self.catalog.committed_names(), sweep=sweep)

    def commit(self, run_id: str, shard: str, keys: list[str], counts: dict[str, int]) -> None:
        """Record the intent, move the shard's staged tar and candidates into place, then write
        its marker."""
        names = [f"{shard}{TAR}", f"{CANDIDATES}/{shard}.parquet"]
        self.catalog.intend(run_id, shard, {shard: names})
        for name in names:
            staged, final = self.staged(run_id, name), self.catalog.path(name)
            if self.fs.exists(staged):
                self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
                self.fs.mv(staged, final)
        marker = {"shard": shard, "run_id": run_id, "uris": keys, "rows": counts}
        self.catalog.write_json(self.catalog.path(COMMITS, f"{shard}.json"), marker)

    def finish(self, run_id: str) -> None:
        self.catalog.finish_run(run_id)
