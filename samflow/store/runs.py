"""Run history and run reports, from what every run leaves under DST: ``_runs/<run_id>.json``
(the manifest) and the ``errors/`` table.

One :class:`RunReport` feeds three views: the summary the CLI prints when a run ends,
``samflow runs DST RUN_ID`` and the Prefect markdown artifact.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from samflow.config import InputConfig, StorageConfig
from samflow.errors import UserError
from samflow.store.catalog import EVALS, RUNS, Catalog

# The manifest's counts, in the order a person reads them.
COUNT_ORDER = ("listed", "already_done", "inputs", "images", "errors", "annotations", "embeddings", "shards")


@dataclass
class ErrorKind:
    error_type: str
    stage: str
    count: int
    example_uri: str
    example_message: str


@dataclass
class StageFigures:
    stage: str
    busy_s: float
    rows: int
    nodes: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class RunReport:
    run_id: str
    dst: str
    started_at: str
    duration_s: float
    counts: dict[str, int]
    stages: list[StageFigures] = field(default_factory=list)
    errors: list[ErrorKind] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # the newest `samflow eval` of DST made after this run (its figures and ground truth), if any
    quality: dict[str, Any] = field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------------


def manifests(dst: str, storage: StorageConfig) -> list[dict[str, Any]]:
    """Every run manifest under DST, oldest first (run ids start with their UTC time)."""
    catalog = Catalog(dst, storage)
    folder = catalog.path(RUNS)
    catalog.fs.invalidate_cache(folder)
    try:
        paths = [p for p in catalog.fs.ls(folder, detail=False) if p.endswith(".json")]
    except FileNotFoundError:
        return []
    blobs = catalog.fs.cat(sorted(paths)) if paths else {}
    found = []
    for path in sorted(paths):
        try:
            found.append(json.loads(blobs[path]))
        except ValueError:
            continue  # a manifest that does not parse is not a run anyone can report on
    return sorted(found, key=lambda m: str(m.get("run_id", "")))


def record_id(now: dt.datetime | None = None) -> str:
    """``20261205T034912Z-f00e22``: sortable by time, unique across machines (runs, evals, rounds)."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def evaluations(dst: str, storage: StorageConfig) -> list[dict[str, Any]]:
    """Every ``samflow eval`` record under DST (``_eval/<eval_id>.json``), oldest first."""
    return json_records(dst, EVALS, storage, order_by="created_at")


def json_records(dst: str, folder: str, storage: StorageConfig, order_by: str) -> list[dict[str, Any]]:
    """The JSON records in ``DST/<folder>/``, sorted by their ``order_by`` field."""
    catalog = Catalog(dst, storage)
    paths = catalog._ls(catalog.path(folder), suffix=".json")
    blobs = catalog.fs.cat(paths) if paths else {}
    found = []
    for path in paths:
        try:
            found.append(json.loads(blobs[path]))
        except ValueError:
            continue  # a record that does not parse holds no figure
    return sorted(found, key=lambda record: str(record.get(order_by, "")))


def latest_evaluation(evals: list[dict[str, Any]], run_id: str) -> dict[str, Any] | None:
    """The newest evaluation made when ``run_id`` was DST's latest run."""
    return next((e for e in reversed(evals) if e.get("run_id") == run_id), None)


def input_sections(dst: str, storage: StorageConfig) -> Callable[[str], InputConfig]:
    """run_id -> the ``input`` section that run decoded with, to read its pictures again the same
    way. A run without a manifest (killed after committing) gets the newest run's."""
    sections: dict[str, InputConfig] = {}
    for found in manifests(dst, storage):
        try:
            sections[str(found.get("run_id"))] = InputConfig.model_validate(found["config"]["input"])
        except (KeyError, TypeError, ValidationError):
            continue  # written by an older samflow: its limits are not known
    latest = list(sections.values())[-1] if sections else InputConfig()
    return lambda run_id: sections.get(run_id, latest)


def manifest(dst: str, run_id: str, storage: StorageConfig) -> dict[str, Any]:
    catalog = Catalog(dst, storage)
    path = catalog.path(RUNS, f"{run_id}.json")
    if not catalog.fs.exists(path):
        known = [m["run_id"] for m in manifests(dst, storage)][-5:]
        hint = f"; recent runs: {', '.join(known)}" if known else "; DST has no runs yet"
        raise UserError(f"no run {run_id!r} under {dst}{hint}")
    return json.loads(catalog.fs.cat_file(path))


def error_kinds(dst: str, run_id: str, storage: StorageConfig) -> list[ErrorKind]:
    """This run's error rows grouped by type and stage, each with one example, most first."""
    table = Catalog(dst, storage).read_table("errors", columns=["uri", "stage", "error_type", "message", "run_id"])
    if table is None:
        return []
    kinds: dict[tuple[str, str], ErrorKind] = {}
    for row in table.to_pylist():
        if row["run_id"] != run_id:
            continue
        key = (row["error_type"], row["stage"])
        if key not in kinds:
            kinds[key] = ErrorKind(row["error_type"], row["stage"], 0, row["uri"], row["message"])
        kinds[key].count += 1
    return sorted(kinds.values(), key=lambda k: (-k.count, k.error_type))


def started_at(manifest: dict[str, Any]) -> str:
    if manifest.get("started_at"):
        return str(manifest["started_at"])
    finished = manifest.get("finished_at")
    if not finished:
        return ""
    total = float(manifest.get("timings_s", {}).get("total", 0.0))
    return (dt.datetime.fromisoformat(finished) - dt.timedelta(seconds=total)).isoformat()


def build_report(manifest: dict[str, Any], errors: list[ErrorKind]) -> RunReport:
    timings = manifest.get("timings_s", {})
    busy = timings.get("stage_busy", {})
    placement = manifest.get("placement", {})
    stages = [
        StageFigures(
            stage=stage, busy_s=float(seconds),
            rows=int(sum(node.get("rows", 0) for node in placement.get(stage, {}).values())),
            nodes=len(placement.get(stage, {})),
        )
        for stage, seconds in busy.items()
    ]
    return RunReport(
        run_id=manifest["run_id"], dst=manifest.get("dst", ""), started_at=started_at(manifest),
        duration_s=float(timings.get("total", 0.0)), counts=dict(manifest.get("counts", {})),
        stages=stages, errors=errors, models=dict(manifest.get("models", {})),
        timings={k: float(v) for k, v in timings.items() if isinstance(v, (int, float))},
    )


QUALITY_FIGURES = ("miou", "recall_50", "recall_75", "mask_ap", "mask_ap50", "mask_ap75", "mask_ar100",
                   "images", "gt_masks")


def load_report(dst: str, run_id: str, storage: StorageConfig) -> RunReport:
    report = build_report(manifest(dst, run_id, storage), error_kinds(dst, run_id, storage))
    scored = latest_evaluation(evaluations(dst, storage), run_id)
    if scored is not None:
        report.quality = {"eval_id": scored.get("eval_id"), "gt": scored.get("gt"),
                          **{name: scored[name] for name in QUALITY_FIGURES if name in scored}}
    return report


# --- views -----------------------------------------------------------------------------------


def history_rows(found: list[dict[str, Any]], evals: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per run for ``samflow runs DST``; with ``evals``, the newest evaluation's mIoU and
    mask AP of each run (blank where none was made)."""
    rows = []
    for item in found:
        counts = item.get("counts", {})
        scored = latest_evaluation(evals or [], item.get("run_id", ""))
        rows.append({
            "run_id": item.get("run_id", ""),
            "started": started_at(item)[:19].replace("T", " "),
            "duration_s": round(float(item.get("timings_s", {}).get("total", 0.0)), 1),
            "inputs": counts.get("inputs", 0),
            "images": counts.get("images", 0),
            "errors": counts.get("errors", 0),
            "masks": counts.get("annotations", 0),
            "models": ", ".join(sorted({m.get("model", "") for m in item.get("models", {}).values()} - {""})),
            "miou": None if scored is None else round(float(scored["miou"]), 4),
            "mask_ap": None if scored is None else round(float(scored["mask_ap"]), 4),
        })
    return rows


def history_table(rows: list[dict[str, Any]], dst: str, title: str = "runs") -> Table:
    table = Table(title=f"{title} under {dst}")
    for name in rows[0] if rows else ():
        values = [row[name] for row in rows if row[name] is not None]  # a figure may be blank (None) in any row
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*("-" if value is None else str(value) for value in row.values()))
    return table


def report_renderable(report: RunReport) -> Group:
    """The report as rich tables (terminal)."""
    counts = Table(title=f"run {report.run_id}", show_header=False)
    counts.add_column("count")
    counts.add_column("value", justify="right")
    for key in _ordered_counts(report.counts):
        counts.add_row(key, str(report.counts[key]))
    counts.add_row("duration", f"{report.duration_s:.1f} s")
    # The output location on a line of its own: a table cell would fold a long URI.
    parts: list[Any] = [counts, Text(f"output: {report.dst}", no_wrap=True, overflow="ignore")]
    if report.errors:
        errors = Table(title="errors by type")
        for name in ("type", "stage", "count", "example"):
            errors.add_column(name, overflow="fold")
        for kind in report.errors:
            errors.add_row(kind.error_type, kind.stage, str(kind.count),
                           f"{posixpath.basename(kind.example_uri)}: {kind.example_message}")
        parts.append(errors)
    if report.stages:
        stages = Table(title="stages")
        for name in ("stage", "busy s", "rows", "rows/s busy", "nodes"):
            stages.add_column(name, justify="left" if name == "stage" else "right")
        for figures in report.stages:
            stages.add_row(figures.stage, f"{figures.busy_s:.2f}", str(figures.rows),
                           f"{figures.rows_per_s:.2f}", str(figures.nodes))
        parts.append(stages)
    if report.quality:
        quality = Table(title=f"quality (eval {report.quality['eval_id']} against {report.quality['gt']})")
        for name in ("figure", "value"):
            quality.add_column(name, justify="left" if name == "figure" else "right", overflow="fold")
        for name in QUALITY_FIGURES:
            if name in report.quality:
                value = report.quality[name]
                quality.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
        parts.append(quality)
    if report.models:
        models = Table(title="models")
        for name in ("stage", "model", "checkpoint sha256"):
            models.add_column(name, overflow="fold")
        for stage, info in report.models.items():
            models.add_row(stage, str(info.get("model", "")), str(info.get("checkpoint_sha256") or "-"))
        parts.append(models)
    return Group(*parts)


def report_markdown(report: RunReport) -> str:
    """The same report as markdown (the Prefect artifact)."""
    lines = [f"# samflow run `{report.run_id}`", "",
             f"Output `{report.dst}`, started {report.started_at}, {report.duration_s:.1f} s.", "",
             "| count | value |", "|---|---|"]
    lines += [f"| {key} | {report.counts[key]} |" for key in _ordered_counts(report.counts)]
    if report.errors:
        lines += ["", "## Errors by type", "", "| type | stage | count | example |", "|---|---|---|---|"]
        lines += [f"| {k.error_type} | {k.stage} | {k.count} | `{k.example_uri}`: {_cell(k.example_message)} |"
                  for k in report.errors]
    if report.stages:
        lines += ["", "## Stages", "", "| stage | busy s | rows | rows/s busy | nodes |", "|---|---|---|---|---|"]
        lines += [f"| {s.stage} | {s.busy_s:.2f} | {s.rows} | {s.rows_per_s:.2f} | {s.nodes} |"
                  for s in report.stages]
    if report.models:
        lines += ["", "## Models", "", "| stage | model | checkpoint sha256 |", "|---|---|---|"]
        lines += [f"| {stage} | `{info.get('model', '')}` | `{info.get('checkpoint_sha256') or '-'}` |"
                  for stage, info in report.models.items()]
    return "\n".join(lines) + "\n"


def report_json(report: RunReport) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(report)


def print_report(report: RunReport, console: Console) -> None:
    console.print(report_renderable(report))


def _ordered_counts(counts: dict[str, int]) -> list[str]:
    return [k for k in COUNT_ORDER if k in counts] + sorted(k for k in counts if k not in COUNT_ORDER)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:300]
