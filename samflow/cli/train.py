"""``samflow train DST --out MODEL_URI``: fine-tune the segment model on DST's ground truth
and reviews (Ray Train); ``samflow engine-round``: one round of the data engine (Prefect)."""

from __future__ import annotations

import argparse
import json
import sys

from samflow.cli import options
from samflow.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="fine-tune the segment model (SAM) on DST's ground truth and reviews")
    train.add_argument("dst", help="output URI of annotate runs (its ground-truth rows and reviews/ are the data)")
    train.add_argument("--out", required=True, dest="out_uri", help="model directory to write (local path or s3://)")
    train.add_argument("--base", help="model to start from (default: train.base_model, else stages.segment.model)")
    train.add_argument("--epochs", type=int, help="passes over the training split (train.epochs)")
    train.add_argument("--max-minutes", type=float, help="stop training after this many minutes (train.max_minutes)")
    train.add_argument("--num-workers", type=int, help="Ray Train workers (train.num_workers)")
    options.add_config(train, profile=True)
    train.set_defaults(run=run_train)

    round_ = commands.add_parser("engine-round", help="one data-engine round: annotate, score, train, score again")
    options.add_source_and_out(round_)
    round_.add_argument("--holdout", required=True, help="held-out images with their ground truth (never trained on)")
    options.add_config(round_, profile=True)
    options.add_deploy(round_)
    round_.set_defaults(run=run_round)


def _overrides(args: argparse.Namespace) -> list[str]:
    flags = {"train.epochs": args.epochs, "train.max_minutes": args.max_minutes, "train.num_workers": args.num_workers}
    return list(args.overrides) + [f"{key}={value}" for key, value in flags.items() if value is not None]


def run_train(args: argparse.Namespace) -> int:
    from samflow.cli.options import user_config
    from samflow.cli.session import stopping_ray_started_here
    from samflow.store.storage import absolute
    from samflow.train.run import train_model

    cfg = user_config(args.config, _overrides(args), args.profile)
    _quiet_ray_data()
    with stopping_ray_started_here():  # absolute: the training workers do not share this process's folder
        lineage = train_model(absolute(args.dst), absolute(args.out_uri), cfg, base=args.base)
    last = lineage["epochs"][-1] if lineage["epochs"] else {}
    summary = {"model": args.out_uri, "base_model": lineage["base_model"], "epochs_done": lineage["epochs_done"],
               "holdout_miou": last.get("holdout_miou"), "data": lineage["data"], "stopped": lineage["stopped"]}
    print(json.dumps(summary, indent=1))
    return 0


def _quiet_ray_data() -> None:
    """No Ray Data progress bars; the workers' own lines (samflow train: epoch ...) stay: they
    are the run's progress on the terminal."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def run_round(args: argparse.Namespace) -> int:
    from samflow.cli import logs
    from samflow.cli.session import stopping_ray_started_here
    from samflow.rounds.holdout import config_problem, ground_truth_problem
    from samflow.store.storage import absolute

    cfg = options.user_config(args.config, args.overrides, args.profile)
    # before Prefect and Ray start; a deployment's held-out split is read when it runs
    problem = config_problem(cfg) if args.deploy else ground_truth_problem(absolute(args.holdout), cfg)
    if problem:
        raise UserError(problem)
    if args.deploy:
        from samflow.cli.schedule import register_deployment
        from samflow.flows.engine_round import build_round_deployment

        return register_deployment(lambda: build_round_deployment(
            args.src, args.dst, args.holdout, config=cfg, profile=args.profile, cron=args.cron,
            work_pool_name=args.work_pool), args)
    from samflow.flows.engine_round import engine_round

    logs.quiet_ray_data(args.verbose)
    with stopping_ray_started_here():
        record = engine_round(args.src, args.dst, args.holdout, config=cfg.model_dump(mode="json"))
    before, after = record["holdout_before"], record["holdout_after"]
    print(f"samflow engine-round {record['round_id']}: held-out mIoU {before['miou']:.4f} -> {after['miou']:.4f}; "
          f"current model: {record['current_model']}", file=sys.stderr)
    print(json.dumps(record, indent=1))
    return 0
