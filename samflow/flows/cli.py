"""The ``samflow`` command line (see DESIGN.md, "Interfaces that stay stable")."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import samflow
from samflow.flows import errors, logs
from samflow.flows.errors import UserError, user_error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"samflow {samflow.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    annotate = commands.add_parser("annotate", help="annotate a dataset into Parquet tables")
    annotate.add_argument("src", help="source URI: local path, file://, s3://bucket/prefix")
    annotate.add_argument("--out", required=True, dest="dst", help="output URI")
    annotate.add_argument("--config", type=Path, help="YAML run config")
    annotate.add_argument("--set", action="append", default=[], dest="overrides",
                          metavar="KEY=VALUE", help="override one config key (repeatable)")
    annotate.add_argument("--profile", choices=["tiny"], help="tiny: offline dry run on tiny:// models")
    annotate.add_argument("--wait", action="store_true",
                          help="if another run holds DST, wait for it instead of refusing")

    export = commands.add_parser("export", help="export annotations")
    export_formats = export.add_subparsers(dest="format", required=True)
    coco = export_formats.add_parser("coco", help="COCO / SA-1B JSON")
    coco.add_argument("dst", help="output URI of an annotate run")
    coco.add_argument("out", type=Path, help="JSON file to write")

    models = commands.add_parser("models", help="model utilities")
    model_commands = models.add_subparsers(dest="action", required=True)
    check = model_commands.add_parser("check", help="load a model or checkpoint and describe it")
    check.add_argument("uri")
    check.add_argument("--family")

    submit = commands.add_parser("submit", help="run a samflow command as a Ray Job")
    submit.add_argument("--address", required=True, help="Ray dashboard URL, e.g. http://head:8265")
    submit.add_argument("--working-dir", help="directory shipped to the cluster")
    submit.add_argument("--no-wait", action="store_true", help="submit, print the job id, return")
    submit.add_argument("--no-pip", action="store_true",
                        help="do not pip-install samflow's pins on the cluster (it runs the samflow image)")
    submit.add_argument("job", nargs=argparse.REMAINDER, help="samflow command to run")

    runs = commands.add_parser("runs", help="list the runs under DST, or show one run's report")
    runs.add_argument("dst", help="output URI of annotate runs")
    runs.add_argument("run_id", nargs="?", help="show this run's report")
    runs.add_argument("--json", action="store_true", help="print JSON instead of tables")
    runs.add_argument("--config", type=Path, help="YAML run config (its storage settings)")
    runs.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")

    for name, text in (("deploy", "register a Prefect deployment of annotate on the config's cron"),
                       ("schedule", "serve annotate's schedule in the foreground (no worker needed)")):
        scheduled = commands.add_parser(name, help=text)
        scheduled.add_argument("src", help="source URI")
        scheduled.add_argument("--out", required=True, dest="dst", help="output URI")
        scheduled.add_argument("--config", type=Path, help="YAML run config; its `schedule` is the cron")
        scheduled.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
        scheduled.add_argument("--profile", choices=["tiny"])
        scheduled.add_argument("--cron", help="cron string (overrides the config's `schedule`)")
        scheduled.add_argument("--timezone", default="UTC", help="timezone of the cron")
        scheduled.add_argument("--name", default="annotate", help="deployment name")
        if name == "deploy":
            scheduled.add_argument("--work-pool", help="work pool whose workers run it (default: none, for `samflow schedule`)")
    return parser


def _annotate(args: argparse.Namespace) -> int:
    from samflow.flows.lease import Lease
    from samflow.flows.preflight import check_run
    from samflow.flows.progress import RunProgress

    cfg = user_config(args.config, args.overrides, args.profile)
    check_run(args.src, args.dst, cfg)  # seconds, before Prefect and Ray start
    lease = Lease(args.dst, cfg.storage, ttl_s=cfg.output.lease_ttl_s)
    lease.acquire(wait=args.wait)  # refuses at once when another run writes DST
    try:
        from samflow.flows.annotate import annotate_dataset

        logs.quiet_ray_data(args.verbose)
        with RunProgress() as progress:
            manifest = annotate_dataset(args.src, args.dst, config=cfg.model_dump(mode="json"),
                                        observer=progress, hold_lease=False)
    finally:
        lease.release()
    _print_run_summary(manifest, cfg, progress)
    # For scripts: the last thing on stdout (Ray may print its own lines there first).
    print(json.dumps({"run_id": manifest["run_id"], "counts": manifest["counts"]}, indent=1))
    return 0


def _print_run_summary(manifest: dict, cfg: object, progress: object) -> None:
    from samflow.flows import runs

    console = progress.console  # type: ignore[attr-defined]
    if not manifest.get("run_id"):
        counts = manifest["counts"]
        console.print(f"samflow: nothing new ({counts['listed']} listed, {counts['already_done']} already done)")
        return
    errors = runs.error_kinds(manifest["dst"], manifest["run_id"], cfg.storage) if manifest["counts"]["errors"] else []
    runs.print_report(runs.build_report(manifest, errors), console)


def _runs(args: argparse.Namespace) -> int:
    from rich.console import Console

    from samflow.flows import runs

    cfg = user_config(args.config, args.overrides, None)
    console = Console()
    if not console.is_terminal:  # piped or captured: room for whole run ids and model names
        console = Console(width=200)
    if args.run_id:
        report = runs.load_report(args.dst, args.run_id, cfg.storage)
        if args.json:
            print(json.dumps(runs.report_json(report), indent=1))
        else:
            runs.print_report(report, console)
        return 0
    rows = runs.history_rows(runs.manifests(args.dst, cfg.storage))
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        console.print(f"no runs under {args.dst}")
    else:
        console.print(runs.history_table(rows, args.dst))
    return 0


def user_config(path: Path | None, overrides: list[str], profile: str | None):  # noqa: ANN201
    """load_config, with a malformed file, override or profile reported as a UserError."""
    import yaml

    from samflow.flows.config import load_config

    try:
        return load_config(path, overrides, profile)
    except (ValueError, yaml.YAMLError, OSError) as exc:
        mapped = user_error(exc)
        if mapped is not None:
            raise mapped from exc
        raise UserError(f"config: {errors.one_line(exc)}") from exc


def _export(args: argparse.Namespace) -> int:
    from samflow.flows.export import export_coco

    summary = export_coco(args.dst, args.out)
    print(json.dumps(summary))
    return 0


def _models(args: argparse.Namespace) -> int:
    from samflow.models.check import check_model
    from samflow.models.registry import ModelLoadError

    try:
        print(json.dumps(check_model(args.uri, family=args.family), indent=1))
    except ModelLoadError as exc:
        print(f"samflow models check: {exc}", file=sys.stderr)
        return 2
    return 0


def _submit(args: argparse.Namespace) -> int:
    from samflow.flows.submit import run_submit

    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not job:
        raise SystemExit("samflow submit: give the samflow command to run, e.g. annotate SRC --out DST")
    return run_submit(args.address, job, working_dir=args.working_dir, wait=not args.no_wait,
                      pip=False if args.no_pip else None)


def _scheduled_deployment(args: argparse.Namespace):  # noqa: ANN202
    from samflow.flows.deployments import build_deployment

    overrides = list(args.overrides) + ([f"schedule={json.dumps(args.cron)}"] if args.cron else [])
    cfg = user_config(args.config, overrides, None)
    try:
        deployment = build_deployment(args.src, args.dst, config=cfg, profile=args.profile, name=args.name,
                                      timezone=args.timezone, work_pool_name=getattr(args, "work_pool", None))
    except ValueError as exc:  # a malformed cron or timezone
        raise UserError(f"schedule {cfg.schedule!r} ({args.timezone}): {errors.one_line(exc)}") from exc
    return deployment, cfg


def _deploy(args: argparse.Namespace) -> int:
    deployment, cfg = _scheduled_deployment(args)
    deployment_id = deployment.apply(work_pool_name=args.work_pool)
    where = f"work pool {args.work_pool}" if args.work_pool else "no work pool: run `samflow schedule` with the same arguments"
    print(f"deployment {deployment.flow_name}/{deployment.name} ({deployment_id}); "
          f"schedule: {cfg.schedule or 'none (on demand)'} {args.timezone if cfg.schedule else ''}; {where}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from prefect import serve

    deployment, cfg = _scheduled_deployment(args)
    if not cfg.schedule:
        raise UserError("no schedule: set `schedule` in the config or give --cron '0 2 * * *'")
    print(f"serving {deployment.flow_name}/{deployment.name} on '{cfg.schedule}' ({args.timezone}); Ctrl-C stops",
          file=sys.stderr)
    serve(deployment, print_starting_message=bool(args.verbose))
    return 0


HANDLERS = {"annotate": _annotate, "export": _export, "models": _models, "submit": _submit, "runs": _runs,
            "deploy": _deploy, "schedule": _schedule}


def main(argv: list[str] | None = None) -> int:
    args = errors.with_verbose_flag(_parser()).parse_args(argv)
    with logs.console(args.verbose):
        try:
            return HANDLERS[args.command](args)
        except Exception as exc:  # noqa: BLE001 - every failure ends in one clear line and an exit code
            return errors.report_failure(exc, f"samflow {args.command}", args.verbose)


if __name__ == "__main__":
    sys.exit(main())
