"""How far an annotate run is, for whoever watches it: the counts, the plain progress line, and
the observer a run without one gets (a deployment's run: its line goes to the Prefect run log).

The flow feeds an observer ``planned(run_id, total)`` once the plan is known and ``committed(result,
meta)`` after every shard commit (``run_pipeline``'s ``on_commit`` hook). The CLI's live bar
(samflow/cli/progress.py) shows the same figures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

from samflow.store.catalog import ShardResult

INTERVAL_S = 10.0  # between two plain progress lines


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


class RunCounts:
    """Inputs done of total, errors, rate and ETA of one run (thread-safe)."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.total = 0
        self.done = 0
        self.errors = 0
        self.started = time.monotonic()
        self.load = StageLoad()
        self.lock = threading.Lock()

    def plan(self, run_id: str, total: int) -> None:
        with self.lock:
            self.run_id, self.total, self.started = run_id, total, time.monotonic()

    def add(self, result: ShardResult, meta: dict[str, list[dict[str, Any]]]) -> None:
        with self.lock:
            self.done += len(result.uris)
            self.errors += int(result.rows.get("errors", 0))
            self.load.add(meta)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def extra(self) -> str:
        slowest = self.load.bottleneck()
        return f", errors {self.errors}" + (f", bottleneck {slowest}" if slowest else "")

    def line(self) -> str:
        """The plain progress line."""
        with self.lock:
            pct = 100.0 * self.done / self.total if self.total else 100.0
            eta = self.eta_s()
            eta_text = f"ETA {eta:.0f}s" if eta is not None else "ETA ?"
            return (f"samflow: {self.done}/{self.total} inputs ({pct:.0f}%), {self.rate():.2f} inputs/s, "
                    f"{eta_text}{self.extra()}")


class Ticker:
    """Calls ``say(counts.line())`` every ``interval_s`` seconds from a thread, and once at the end."""

    def __init__(self, counts: RunCounts, say: Any, interval_s: float = INTERVAL_S) -> None:
        self.counts, self.say, self.interval_s = counts, say, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="samflow-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.say(self.counts.line())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.say(self.counts.line())


class LoggedProgress:
    """The observer of a run nobody watches on a terminal (a deployment's run): the plan, then
    the progress line every ``interval_s`` seconds and at the end, on ``logger``."""

    # No instance __dict__: Prefect records flow parameters and must see an opaque object here.
    __slots__ = ("_ticker", "counts", "logger")

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, interval_s: float = INTERVAL_S) -> None:
        self.counts = RunCounts()
        self.logger = logger
        self._ticker = Ticker(self.counts, lambda line: logger.info("%s", line), interval_s)

    def planned(self, run_id: str, total: int) -> None:
        self.counts.plan(run_id, total)
        if total:
            self.logger.info("samflow: run %s: %d inputs to process", run_id, total)
            self._ticker.start()

    def committed(self, result: ShardResult, meta: dict[str, list[dict[str, Any]]]) -> None:
        self.counts.add(result, meta)

    def close(self) -> None:
        self._ticker.stop()
