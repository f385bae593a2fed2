"""The output store's layout and its commit protocol (exactly-once across kills and retries).

    DST/<table>/<shard>.parquet          committed shards (images, annotations, embeddings, errors)
    DST/_commits/<shard>.json            one marker per committed shard: its source URIs and rows
    DST/_commits/_checkpoint/<seq>.parquet  markers compacted (see samflow/store/checkpoint.py)
    DST/_commits/_pending/<run_id>/<name>.json  intent: the files a commit is about to move into place
    DST/_commits/_pending/_format.json   this output's leftovers are all named by intents
    DST/_staging/<run_id>/<table>/...    shards written by the pipeline, not yet committed
    DST/_runs/<run_id>.json              run manifest
    DST/_eval/<eval_id>.json             quality figures (samflow eval)

A shard is committed by recording its intent (the table files it is about to move into place), moving
its staged files into place and then writing its marker; the marker is the commit point. Table files
without a marker (a run killed before it) are removed before the next run plans, so their items are
simply processed again. That cleanup reads the intents alone, not the tables: its cost follows the
killed runs' shards, not the output's history. A run drops its intents once all its shards are
committed. An output written before intents (no ``_format.json``) is swept once by listing its
tables, then marked. Shards holding video frames are
committed together at the end of the run under one group marker (``"shards": [...]``), so a video
is committed whole or not at all. Shard names hash the rows they hold: a retried write task
overwrites its own staged files.

The marker is written whole or not at all (a temporary name, then a rename on local disks; a single
PUT on object stores), so a kill while writing it cannot leave a half marker that would break the
next plan. A marker that does not parse anyway (written by something else) counts as absent.

Not Ray Data's checkpointing or save modes: they work per datasink and write task, with no commit
point across the several tables a batch writes. The marker gives one.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from samflow.config import StorageConfig
from samflow.schemas.ids import shard_id
from samflow.schemas.tables import TABLES
from samflow.store import checkpoint
from samflow.store.storage import filesystem, put_whole

COMMITS = "_commits"
DONE = "_done"  # committed item keys, one file per shard (see samflow/store/doneset.py)
STAGING = "_staging"
RUNS = "_runs"
EVALS = "_eval"  # one JSON per `samflow eval`: figures, ground truth, the runs it covered
ROUNDS = "_rounds"  # one JSON per `samflow engine-round`: models, data, held-out figures before and after
PENDING = "_pending"  # under _commits/: intents of commits under way
INTENTS_FORMAT = "_format.json"  # under _pending/: written once the output's pre-intent leftovers are swept
# A run compacts the markers into a checkpoint once this many are listed (one LIST page's worth).
CHECKPOINT_EVERY = 1000

log = logging.getLogger(__name__)

# (folder, suffix) of the files a shard commits: what the one-time sweep of an output written before
# intents lists.
TABLE_FILES: tuple[tuple[str, str], ...] = tuple((table, ".parquet") for table in (*TABLES, DONE))


@dataclass
class ShardResult:
    """What one write task staged: returned through Ray Data to the driver, which commits it."""

    shard: str
    uris: list[str]
    rows: dict[str, int] = field(default_factory=dict)
    # URIs with video frames in this shard: their other frames may lie in other shards.
    frame_uris: list[str] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ShardResult:
        """From one row of the writer's output (schemas.tables.SHARD_RESULT, as Python values)."""
        return cls(shard=row["shard"], uris=list(row["uris"]), rows=dict(row["rows"]), frame_uris=list(row["frames"]))


class Catalog:
    def __init__(self, dst: str, storage: StorageConfig) -> None:
        self.fs, self.root = filesystem(dst, storage)
        self.dst = dst

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def staged_path(self, run_id: str, table: str, shard: str) -> str:
        return self.path(STAGING, run_id, table, f"{shard}.parquet")

    def put_staged(self, run_id: str, table: str, shard: str, data: bytes) -> None:
        path = self.staged_path(run_id, table, shard)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.pipe_file(path, data)

    def committed_shards(self, markers: list[str] | None = None) -> dict[str, dict]:
        """Marker contents by shard name: the latest checkpoint's and the markers listed after it,
        or only ``markers`` when given (markers that do not parse count as absent)."""
        if markers is not None:
            return self._parse_markers(markers)
        listed, _, rows = checkpoint.read_history(
            self.fs, self.path(COMMITS), lambda: self._parse_markers(self._markers()), full=True)
        shards = checkpoint.contents(rows) if rows is not None else {}
        shards.update(listed)
        return shards

    def _parse_markers(self, markers: list[str]) -> dict[str, dict]:
        if not markers:
            return {}
        blobs = self.fs.cat(markers, on_error="return")
        shards = {}
        for path in markers:
            if isinstance(blobs[path], FileNotFoundError):
                continue  # compacted into a checkpoint since it was listed
            try:
                marker = json.loads(blobs[path])
                marker["uris"]  # noqa: B018 - a marker without its URIs commits nothing
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable commit marker %s", path)
                continue
            shards[posixpath.basename(path)[: -len(".json")]] = marker
        return shards

    def committed_names(self) -> set[str]:
        """Names of the committed shards, from the checkpoint's names column and the marker names
        alone (only group markers, written for videos, are read): cheap with millions of markers."""
        listed, _, rows = checkpoint.read_history(self.fs, self.path(COMMITS), self._listed_names, full=False)
        return listed | (checkpoint.names(rows) if rows is not None else set())

    def _listed_names(self) -> set[str]:
        markers = self._markers()
        groups = [p for p in markers if posixpath.basename(p).startswith("group-")]
        plain = {posixpath.basename(p)[: -len(".json")] for p in set(markers) - set(groups)}
        return plain | self.shard_names(self._parse_markers(groups)) if groups else plain

    def is_committed(self, name: str) -> bool:
        """Whether a marker named ``name`` was written: still in ``_commits/``, or compacted."""
        return self.fs.exists(self.path(COMMITS, f"{name}.json")) or name in self.committed_names()

    def checkpoint(self, min_markers: int = 1) -> int:
        """Compact the listed markers into a new checkpoint once there are ``min_markers`` of them:
        write it, then delete them, then older checkpoints (each step safe to cut short; see
        samflow/store/checkpoint.py). Returns how many markers it compacted."""
        commits = self.path(COMMITS)
        listed, seq, previous = checkpoint.read_history(self.fs, commits, self._markers, full=True)
        if len(listed) < max(1, min_markers):
            return 0
        markers = self._parse_markers(listed)
        if not markers:
            return 0
        rows = checkpoint.merged(previous, checkpoint.to_rows(markers))
        checkpoint.write_checkpoint(self.fs, commits, seq + 1, rows)
        self.fs.rm([self.path(COMMITS, f"{name}.json") for name in markers])
        older = [path for number, path in checkpoint.checkpoints(self.fs, commits) if number <= seq]
        if older:
            self.fs.rm(older)
        return len(markers)

    def _markers(self) -> list[str]:
        return self._ls(self.path(COMMITS), suffix=".json")

    def done_uris(self, shards: dict[str, dict]) -> set[str]:
        return {uri for marker in shards.values() for uri in marker["uris"]}

    def remove_uncommitted(
        self, shards: dict[str, dict] | set[str], sweep: tuple[tuple[str, str], ...] = TABLE_FILES,
    ) -> list[str]:
        """Delete the files of shards that never got a marker, and stale staging folders.
        ``shards``: markers, or the committed shard names. Reads only the intents of commits under
        way (one LIST), so a run's start costs what killed runs left, not the output's history.
        An output with no intents format marker is swept once over ``sweep`` ((folder, suffix))."""
        committed = shards if isinstance(shards, set) else self.shard_names(shards)
        pending, marked = self.path(COMMITS, PENDING), self.path(COMMITS, PENDING, INTENTS_FORMAT)
        self.fs.invalidate_cache(pending)
        entries = self.fs.find(pending)
        removed = self._remove_intended([p for p in entries if p != marked], committed)
        if marked not in entries:
            removed += self._sweep(sweep, committed)
            self.write_json(marked, {"intents": 1})
        if isinstance(self.fs, LocalFileSystem):  # put_whole's temporaries exist on local disks only
            for temporary in self._ls(self.path(COMMITS), suffix=".tmp", hidden=True):
                self.fs.rm(temporary)  # a marker write cut short
        if self.fs.exists(self.path(STAGING)):
            self.fs.rm(self.path(STAGING), recursive=True)
        return removed

    def _remove_intended(self, intents: list[str], committed: set[str]) -> list[str]:
        """Delete the files that ``intents`` name for shards not in ``committed``, then the intents."""
        if not intents:
            return []
        removed = []
        named = [p for p in intents if not posixpath.basename(p).startswith(".")]  # not a cut-short write
        blobs = self.fs.cat(named, on_error="return") if named else {}
        for path in named:
            try:
                files = json.loads(blobs[path])["files"]
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable commit intent %s", path)
                continue
            for shard, relative in files.items():
                if shard in committed:
                    continue
                for name in relative:
                    target = self.path(name)
                    self.fs.invalidate_cache(target)
                    if self.fs.exists(target):
                        self.fs.rm(target)
                        removed.append(target)
        pending = self.path(COMMITS, PENDING)
        runs = sorted({posixpath.dirname(p) for p in intents} - {pending})  # their folders go too
        self.fs.rm(runs + [p for p in intents if posixpath.dirname(p) == pending], recursive=True)
        return removed

    def _sweep(self, sweep: tuple[tuple[str, str], ...], committed: set[str]) -> list[str]:
        """Delete every file under ``sweep`` whose name no marker commits (lists whole folders)."""
        removed = []
        for folder, suffix in sweep:
            for path in self._ls(self.path(folder) if folder else self.root, suffix=suffix):
                if posixpath.basename(path)[: -len(suffix)] not in committed:
                    self.fs.rm(path)
                    removed.append(path)
        return removed

    def intend(self, run_id: str, name: str, files: dict[str, list[str]]) -> None:
        """Record that commit ``name`` is about to move ``files`` (by shard, relative to DST) into
        place: if no marker follows, the next run's cleanup deletes them without listing tables."""
        self.write_json(self.path(COMMITS, PENDING, run_id, f"{name}.json"), {"name": name, "files": files})

    def commit(self, run_id: str, result: ShardResult) -> None:
        """Record the intent, move the shard's staged files into place, then write its marker.
        Safe to repeat: a file already moved by an interrupted attempt is left where it is."""
        self.place(run_id, result.shard, [result])
        marker = {"shard": result.shard, "run_id": run_id, "uris": result.uris, "rows": result.rows}
        self.write_json(self.path(COMMITS, f"{result.shard}.json"), marker)

    def commit_group(self, run_id: str, results: list[ShardResult]) -> str:
        """Commit several shards at one commit point, one marker naming them all: the frames of
        a video spread over shards become visible together or not at all. Returns its name."""
        shards = sorted(result.shard for result in results)
        name = f"group-{shard_id(shards)}"
        self.place(run_id, name, results)
        rows: Counter[str] = Counter()
        for result in results:
            rows.update(result.rows)
        uris = sorted({uri for result in results for uri in result.uris})
        marker = {"shard": name, "shards": shards, "run_id": run_id, "uris": uris, "rows": dict(rows)}
        self.write_json(self.path(COMMITS, f"{name}.json"), marker)
        return name

    def place(self, run_id: str, name: str, results: list[ShardResult]) -> None:
        """What a commit does before its marker: record the intent, then move the staged files
        into place. A kill after this leaves files that the next run's cleanup finds by the intent."""
        self.intend(run_id, name, {r.shard: [posixpath.join(t, f"{r.shard}.parquet") for t in self._tables(r)]
                                   for r in results})
        for result in results:
            self._move_into_place(run_id, result)

    @staticmethod
    def shard_names(markers: dict[str, dict]) -> set[str]:
        """Names of the table files that ``markers`` commit (a group marker commits several)."""
        return {shard for name, marker in markers.items() for shard in marker.get("shards", [name])}

    @staticmethod
    def _tables(result: ShardResult) -> list[str]:
        """The tables ``result`` has rows in: it has a file in each."""
        return [table for table, count in result.rows.items() if count]

    def _move_into_place(self, run_id: str, result: ShardResult) -> None:
        for table in self._tables(result):
            staged = self.staged_path(run_id, table, result.shard)
            final = self.path(table, f"{result.shard}.parquet")
            self.fs.makedirs(self.path(table), exist_ok=True)
            if self.fs.exists(staged) or not self.fs.exists(final):
                self.fs.mv(staged, final)

    def write_json(self, path: str, payload: dict) -> None:
        """Write ``payload`` at ``path`` whole or not at all."""
        put_whole(self.fs, path, json.dumps(payload, indent=1, sort_keys=True).encode())

    def finish_run(self, run_id: str) -> None:
        """Drop the run's intents (its shards are all committed now) and staging folder, and the
        staging root once no other run uses it."""
        try:
            self.fs.rm(self.path(COMMITS, PENDING, run_id), recursive=True)
        except FileNotFoundError:
            pass  # the run committed nothing
        staging = self.path(STAGING, run_id)
        if self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)
        root = self.path(STAGING)
        if self.fs.exists(root) and not self.fs.ls(root, detail=False):
            self.fs.rmdir(root)

    def run_manifests(self) -> list[dict]:
        """Every finished run's manifest (``_runs/<run_id>.json``), oldest first."""
        paths = self._ls(self.path(RUNS), suffix=".json")
        manifests = [json.loads(self.fs.cat_file(p)) for p in paths]
        return sorted(manifests, key=lambda m: m.get("finished_at", ""))

    def _ls(self, folder: str, suffix: str, hidden: bool = False) -> list[str]:
        """Entries of ``folder`` ending in ``suffix``; hidden names (temporaries) only if asked."""
        self.fs.invalidate_cache(folder)
        try:
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(
            p for p in entries
            if p.endswith(suffix) and posixpath.basename(p).startswith(".") == hidden
        )

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table | None:
        """All committed rows of one output table, or None when it has none."""
        committed = self.shard_names(self.committed_shards())
        paths = [
            p for p in self._ls(self.path(table), suffix=".parquet")
            if posixpath.basename(p)[: -len(".parquet")] in committed
        ]
        if not paths:
            return None
        # "default": shards written before a column was added (images.meta_json) read as null there
        return pa.concat_tables(
            [pq.read_table(p, filesystem=self.fs, columns=columns) for p in paths], promote_options="default"
        )

