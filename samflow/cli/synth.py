"""``samflow synth DST --out SYN``: training images from DST's trusted masks (SD + ControlNet),
kept where the segment model agrees, as SA-1B-style tars; ``--deploy`` registers the flow as a
Prefect deployment instead of running it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from samflow.cli import options
from samflow.errors import UserError

# option -> config key (given options override --config and --set)
_OPTIONS = {"variants": "synth.variants", "model": "synth.model", "controlnet": "synth.controlnet",
            "prompt": "synth.prompt", "seed": "synth.seed"}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("synth", help="generate training images from trusted masks (SD + ControlNet)")
    parser.add_argument("dst", help="output URI of an annotate run (its trusted masks are the conditions)")
    parser.add_argument("--out", required=True, dest="syn", help="where the tars go (URI)")
    parser.add_argument("--variants", type=int, help="images per source image (synth.variants)")
    parser.add_argument("--model", help="Stable Diffusion URI, or tiny://controlnet (synth.model)")
    parser.add_argument("--controlnet", help="ControlNet URI (synth.controlnet)")
    parser.add_argument("--prompt", help="prompt template, {labels} = the masks' labels (synth.prompt)")
    parser.add_argument("--seed", type=int, help="base seed (synth.seed)")
    options.add_config(parser, profile=True)
    parser.add_argument("--wait", action="store_true", help="if another run holds SYN, wait for it")
    options.add_deploy(parser)
    parser.set_defaults(run=run)


def _config(args: argparse.Namespace) -> Any:
    from samflow.cli.options import user_config

    given = [f"{key}={json.dumps(getattr(args, name))}" for name, key in _OPTIONS.items()
             if getattr(args, name) is not None]
    return user_config(args.config, list(args.overrides) + given, args.profile)


def run(args: argparse.Namespace) -> int:
    from samflow.store.storage import absolute

    cfg = _config(args)
    args.dst, args.syn = absolute(args.dst), absolute(args.syn)
    if args.deploy:
        return _deploy(args, cfg)
    from samflow.store.catalog import Catalog

    if not Catalog(args.dst, cfg.storage).committed_names():
        raise UserError(f"{args.dst} holds no committed annotate run (nothing to take masks from)")
    from samflow.cli.session import pipeline_session
    from samflow.store.lease import Lease

    lease = Lease(args.syn, cfg.storage, ttl_s=cfg.output.lease_ttl_s)
    with pipeline_session("synth", args.verbose, lease, args.wait, ray_config=cfg.ray,
                          flow_module="samflow.flows.synth") as progress:
        from samflow.flows.synth import synth_dataset

        record = synth_dataset(args.dst, args.syn, config=cfg.model_dump(mode="json"), observer=progress, lease=lease)
    _print_summary(record, progress.console)
    print(json.dumps({"run_id": record["run_id"], "counts": record["counts"],
                      "dropped_by_reason": record.get("dropped_by_reason", {})}, indent=1))
    return 0


def _print_summary(record: dict[str, Any], console: Any) -> None:
    counts = record["counts"]
    if not record.get("run_id"):
        console.print(f"samflow synth: nothing new ({counts['candidates']} candidates, "
                      f"{counts['already_done']} already done)")
        return
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(record["dropped_by_reason"].items())) or "none"
    console.print(f"samflow synth {record['run_id']}: {counts['generated']} generated, {counts['kept']} kept, "
                  f"{counts['dropped']} dropped ({reasons}); {record['timings_s']['images_per_s']:.3f} images/s; "
                  f"manifest {record['path']}", soft_wrap=True, highlight=False)


def _deploy(args: argparse.Namespace, cfg: Any) -> int:
    from samflow.cli.schedule import register_deployment
    from samflow.flows.synth import build_synth_deployment

    return register_deployment(lambda: build_synth_deployment(
        args.dst, args.syn, config=cfg, profile=args.profile, cron=args.cron, work_pool_name=args.work_pool), args)
