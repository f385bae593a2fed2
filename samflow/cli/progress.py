"""The live progress of one annotate run on the terminal (stderr).

On a TTY: one rich bar with inputs done of total, inputs/s, ETA, errors so far and the stage
that is the bottleneck. Elsewhere (CI, Prefect worker logs): one plain line every
``interval_s`` seconds. Fed by the flow: ``planned`` once the plan is known, ``committed`` after
every shard commit (``run_pipeline``'s ``on_commit`` hook). The figures and the plain line are the
flow's own (samflow/flows/progress.py), which deployment-started runs log.
"""

from __future__ import annotations

from typing import IO, Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from samflow.cli.logs import report_console
from samflow.flows.progress import INTERVAL_S, RunCounts, StageLoad, Ticker
from samflow.store.catalog import ShardResult


class RunProgress:
    """Progress of one run. Call ``close()`` (or use it as a context manager) when it ends."""

    # No instance __dict__: Prefect records flow parameters and must see an opaque object here.
    __slots__ = ("_bar", "_task", "_ticker", "console", "counts", "live")

    def __init__(self, stream: IO[str] | None = None, *, interval_s: float = INTERVAL_S,
                 live: bool | None = None) -> None:
        self.console = report_console(stream, stderr=stream is None)
        self.live = self.console.is_terminal if live is None else live
        self.counts = RunCounts()
        self._bar: Progress | None = None
        self._task: Any = None
        self._ticker = Ticker(self.counts, self._print, interval_s)

    @property
    def run_id(self) -> str | None:
        return self.counts.run_id

    @property
    def total(self) -> int:
        return self.counts.total

    @property
    def done(self) -> int:
        return self.counts.done

    @property
    def errors(self) -> int:
        return self.counts.errors

    @property
    def load(self) -> StageLoad:
        return self.counts.load

    # --- fed by the flow ---------------------------------------------------------------------

    def planned(self, run_id: str, total: int) -> None:
        self.counts.plan(run_id, total)
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
            self._print(f"samflow: run {run_id}: {total} inputs to process")
            self._ticker.start()

    def committed(self, result: ShardResult, meta: dict[str, list[dict[str, Any]]]) -> None:
        self.counts.add(result, meta)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.counts.done, rate=f"{self.rate():.2f} inputs/s",
                             extra=self.counts.extra())

    # --- figures -----------------------------------------------------------------------------

    def rate(self) -> float:
        return self.counts.rate()

    def eta_s(self) -> float | None:
        return self.counts.eta_s()

    def line(self) -> str:
        """The plain progress line (non-TTY)."""
        return self.counts.line()

    def _print(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False)

    # --- end ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._ticker.stop()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
