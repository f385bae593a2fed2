"""The live progress of one annotate run on the terminal (stderr).

On a TTY: one rich bar with inputs done of total, inputs/s, ETA, errors so far and the stage
that is the bottleneck. Elsewhere (CI, Prefect worker logs): one plain line every
``interval_s`` seconds. Fed by the flow: ``planned`` once the plan is known, ``committed`` after
every shard commit (``run_pipeline``'s ``on_commit`` hook).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from samflow.store.catalog import ShardResult


class StageLoad:
    """Busy seconds and worker processes per stage, from the per-batch metadata of commits.
    The bottleneck is the stage with the most busy time per worker."""

    def __init__(self) -> None:
        self.busy_s: dict[str, float] = defaultdict(float)
        self.workers: dict[str, set[str]] = defaultdict(set)
        self._seen: set[str] = set()

    def add(self, meta: dict[str, list[dict[str, Any]]]) -> None:
        for stage, batches in meta.items():
            for info in batches:
                key = f"{stage}/{info.get('batch', '')}"
                if key in self._seen:
                    continue
                self._seen.add(key)
                self.busy_s[stage] += float(info.get("busy_s", 0.0))
                self.workers[stage].add(str(info.get("pid", info.get("node", ""))))

    def bottleneck(self) -> str | None:
        if not self.busy_s:
            return None
        return max(self.busy_s, key=lambda s: self.busy_s[s] / max(1, len(self.workers[s])))


class RunProgress:
    """Progress of one run. Call ``close()`` (or use it as a context manager) when it ends."""

    # No instance __dict__: Prefect records flow parameters and must see an opaque object here.
    __slots__ = ("console", "interval_s", "live", "run_id", "total", "done", "errors", "started",
                 "load", "_bar", "_task", "_lock", "_stop", "_ticker")

    def __init__(self, stream: IO[str] | None = None, *, interval_s: float = 10.0,
                 live: bool | None = None) -> None:
        self.console = Console(file=stream, stderr=stream is None)
        self.interval_s = interval_s
        self.live = self.console.is_terminal if live is None else live
        self.run_id: str | None = None
        self.total = 0
        self.done = 0
        self.errors = 0
        self.started = time.monotonic()
        self.load = StageLoad()
        self._bar: Progress | None = None
        self._task: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- fed by the flow ---------------------------------------------------------------------

    def planned(self, run_id: str, total: int) -> None:
        with self._lock:
            self.run_id, self.total, self.started = run_id, total, time.monotonic()
        if not total:
            return
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]annotate"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"), console=self.console, transient=False,
            )
            self._task = self._bar.add_task("annotate", total=total, rate="", extra="")
            self._bar.start()
        else:
            self.console.print(f"samflow: run {run_id}: {total} inputs to process", soft_wrap=True, highlight=False)
            self._ticker = threading.Thread(target=self._tick, name="samflow-progress", daemon=True)
            self._ticker.start()

    def committed(self, result: ShardResult, meta: dict[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            self.done += len(result.uris)
            self.errors += int(result.rows.get("errors", 0))
            self.load.add(meta)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rate():.2f} inputs/s",
                             extra=self._extra())

    # --- figures -----------------------------------------------------------------------------

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        """The plain progress line (non-TTY)."""
        with self._lock:
            pct = 100.0 * self.done / self.total if self.total else 100.0
            eta = self.eta_s()
            eta_text = f"ETA {eta:.0f}s" if eta is not None else "ETA ?"
            return (f"samflow: {self.done}/{self.total} inputs ({pct:.0f}%), {self.rate():.2f} inputs/s, "
                    f"{eta_text}{self._extra()}")

    def _extra(self) -> str:
        slowest = self.load.bottleneck()
        return f", errors {self.errors}" + (f", bottleneck {slowest}" if slowest else "")

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.console.print(self.line(), soft_wrap=True, highlight=False)

    # --- end ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
            if self.total:
                self.console.print(self.line(), soft_wrap=True, highlight=False)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
