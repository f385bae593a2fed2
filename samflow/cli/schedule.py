"""``samflow deploy`` and ``samflow schedule``: annotate (and the index update) on a cron; the
``--deploy`` of ``synth`` and ``engine-round``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from samflow import errors
from samflow.cli import options
from samflow.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    for name, text, run in (
        ("deploy", "register Prefect deployments of annotate (and the index update) on the config's crons", run_deploy),
        ("schedule", "serve annotate's (and the index update's) schedule in the foreground (no worker needed)",
         run_schedule),
    ):
        scheduled = commands.add_parser(name, help=text)
        options.add_source_and_out(scheduled)
        options.add_config(scheduled, profile=True)
        scheduled.add_argument("--cron", help="cron string (overrides the config's `schedule`)")
        scheduled.add_argument("--timezone", default="UTC", help="timezone of the cron")
        scheduled.add_argument("--index-cron", help="cron of the index update (overrides the config's `index.schedule`)")
        scheduled.add_argument("--name", help="deployment name (default: annotate, and index for the index update)")
        if name == "deploy":
            scheduled.add_argument("--work-pool", help="work pool whose workers run it (default: none, for `samflow schedule`)")
        scheduled.set_defaults(run=run)


def _scheduled_deployments(args: argparse.Namespace):  # noqa: ANN202
    """annotate's deployment, and the index update's when ``index.schedule`` (or --index-cron) is set."""
    from samflow.flows.deployments import build_deployment, build_index_deployment

    overrides = list(args.overrides) + ([f"schedule={json.dumps(args.cron)}"] if args.cron else [])
    overrides += [f"index.schedule={json.dumps(args.index_cron)}"] if args.index_cron else []
    cfg = options.user_config(args.config, overrides, None)
    pool = getattr(args, "work_pool", None)
    try:
        deployments = [build_deployment(args.src, args.dst, config=cfg, profile=args.profile,
                                        name=args.name or "annotate", timezone=args.timezone, work_pool_name=pool)]
    except ValueError as exc:  # a malformed cron or timezone
        raise UserError(f"schedule {cfg.schedule!r} ({args.timezone}): {errors.one_line(exc)}") from exc
    if cfg.index.schedule:
        try:
            deployments.append(build_index_deployment(args.dst, config=cfg, name=args.name or "index",
                                                      timezone=args.timezone, work_pool_name=pool))
        except ValueError as exc:
            raise UserError(f"index.schedule {cfg.index.schedule!r} ({args.timezone}): {errors.one_line(exc)}") from exc
    return deployments, cfg


def _cron_of(deployment, timezone: str) -> str:  # noqa: ANN001
    crons = [s.schedule.cron for s in deployment.schedules]
    return f"{crons[0]} {timezone}" if crons else "none (on demand)"


def run_deploy(args: argparse.Namespace) -> int:
    deployments, _ = _scheduled_deployments(args)
    where = f"work pool {args.work_pool}" if args.work_pool else "no work pool: run `samflow schedule` with the same arguments"
    for deployment in deployments:
        deployment_id = deployment.apply(work_pool_name=args.work_pool)
        print(f"deployment {deployment.flow_name}/{deployment.name} ({deployment_id}); "
              f"schedule: {_cron_of(deployment, args.timezone)}; {where}")
    return 0


def run_schedule(args: argparse.Namespace) -> int:
    from prefect import serve

    from samflow.cli.prefect_server import scheduling_server

    deployments, cfg = _scheduled_deployments(args)
    if not cfg.schedule and not cfg.index.schedule:
        raise UserError("no schedule: set `schedule` (or `index.schedule`) in the config or give --cron '0 2 * * *'")
    # Without PREFECT_API_URL, a Prefect server of its own: Prefect's temporary one schedules nothing.
    with scheduling_server() as (url, started_here):
        print(f"Prefect server {url}" + (" (started for this schedule)" if started_here else ""), file=sys.stderr)
        for deployment in deployments:
            print(f"serving {deployment.flow_name}/{deployment.name} on {_cron_of(deployment, args.timezone)}",
                  file=sys.stderr)
        print("Ctrl-C stops", file=sys.stderr)
        serve(*deployments, print_starting_message=bool(args.verbose))
    return 0


def register_deployment(build: Callable[[], Any], args: argparse.Namespace) -> int:
    """``--deploy``: register the deployment ``build`` makes, on ``--cron`` or on demand, for
    ``--work-pool``'s workers (or for ``prefect deployment run``)."""
    try:
        deployment = build()
    except ValueError as exc:  # a malformed cron
        raise UserError(f"--cron {args.cron!r}: {errors.one_line(exc)}") from exc
    deployment_id = deployment.apply(work_pool_name=args.work_pool)
    print(f"deployment {deployment.flow_name}/{deployment.name} ({deployment_id}); schedule: {args.cron or 'on demand'}")
    return 0
