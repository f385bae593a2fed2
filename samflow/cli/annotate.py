"""``samflow annotate``, ``plan`` and ``runs``: run the pipeline over SRC, preview it, report runs."""

from __future__ import annotations

import argparse
import json
import sys

from samflow.cli import logs, options


def register(commands: argparse._SubParsersAction) -> None:
    annotate = commands.add_parser("annotate", help="annotate a dataset into Parquet tables")
    options.add_source_and_out(annotate)
    options.add_config(annotate, profile=True)
    annotate.add_argument("--wait", action="store_true",
                          help="if another run holds DST, wait for it instead of refusing")
    options.add_input_format(annotate)
    annotate.set_defaults(run=run_annotate)

    plan = commands.add_parser("plan", help="print what an annotate run would do, without running it")
    options.add_source_and_out(plan)
    options.add_config(plan)
    options.add_input_format(plan)
    plan.set_defaults(run=run_plan)

    runs = commands.add_parser("runs", help="list the runs under DST, or show one run's report")
    runs.add_argument("dst", help="output URI of annotate runs")
    runs.add_argument("run_id", nargs="?", help="show this run's report")
    runs.add_argument("--json", action="store_true", help="print JSON instead of tables")
    options.add_config(runs)
    runs.set_defaults(run=run_runs)


def run_annotate(args: argparse.Namespace) -> int:
    from samflow.cli.preflight import check_run
    from samflow.cli.session import pipeline_session
    from samflow.store.lease import Lease
    from samflow.store.storage import absolute

    cfg = options.user_config(args.config, options.with_format(args), args.profile)
    src, dst = absolute(args.src), absolute(args.dst)
    check_run(src, dst, cfg)  # seconds, before Prefect and Ray start
    lease = Lease(dst, cfg.storage, ttl_s=cfg.output.lease_ttl_s)
    with pipeline_session("annotate", args.verbose, lease, args.wait, ray_config=cfg.ray,
                          flow_module="samflow.flows.annotate") as progress:
        from samflow.flows.annotate import annotate_dataset

        manifest = annotate_dataset(src, dst, config=cfg.model_dump(mode="json"), observer=progress, lease=lease)
    _print_run_summary(manifest, cfg, progress)
    # For scripts: the last thing on stdout.
    print(json.dumps({"run_id": manifest["run_id"], "counts": manifest["counts"]}, indent=1))
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from samflow.flows.annotate import make_plan
    from samflow.inputs.formats import InputFormatError

    cfg = options.user_config(args.config, options.with_format(args), None)
    logs.quiet_ray_data(args.verbose)
    try:
        plan = make_plan(args.src, args.dst, cfg, read_only=True)
    except (InputFormatError, FileNotFoundError) as exc:
        print(f"samflow plan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"format": plan.format, "new": plan.new, "done": plan.already_done,
                      "excluded": plan.excluded, "seconds": round(plan.seconds, 3)}))
    return 0


def _print_run_summary(manifest: dict, cfg: object, progress: object) -> None:
    from samflow.store import runs

    console = progress.console  # type: ignore[attr-defined]
    if not manifest.get("run_id"):
        counts = manifest["counts"]
        console.print(f"samflow: nothing new ({counts['listed']} listed, {counts['already_done']} already done)")
        return
    errors = runs.error_kinds(manifest["dst"], manifest["run_id"], cfg.storage) if manifest["counts"]["errors"] else []
    runs.print_report(runs.build_report(manifest, errors), console)


def run_runs(args: argparse.Namespace) -> int:
    from samflow.store import runs

    cfg = options.user_config(args.config, args.overrides, None)
    console = logs.report_console()
    if args.run_id:
        report = runs.load_report(args.dst, args.run_id, cfg.storage)
        if args.json:
            print(json.dumps(runs.report_json(report), indent=1))
        else:
            runs.print_report(report, console)
        return 0
    rows = runs.history_rows(runs.manifests(args.dst, cfg.storage), runs.evaluations(args.dst, cfg.storage))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    console.print(runs.history_table(rows, args.dst) if rows else f"no runs under {args.dst}")
    from samflow.rounds.record import round_rows, rounds

    found = rounds(args.dst, cfg.storage)
    if found:
        console.print(runs.history_table(round_rows(found), args.dst, title="engine rounds"))
    return 0
