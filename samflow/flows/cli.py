"""The ``samflow`` command line (see DESIGN.md, "Interfaces that stay stable")."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import samflow

INPUT_FORMATS = ("auto", "files", "manifest", "webdataset", "parquet")  # samflow.flows.inputs.FORMATS


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
    annotate.add_argument("--input-format", choices=INPUT_FORMATS,
                          help="what SRC holds (config input.format; default auto: detected)")

    plan = commands.add_parser("plan", help="print what an annotate run would do, without running it")
    plan.add_argument("src", help="source URI")
    plan.add_argument("--out", required=True, dest="dst", help="output URI")
    plan.add_argument("--config", type=Path, help="YAML run config")
    plan.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    plan.add_argument("--input-format", choices=INPUT_FORMATS, help="what SRC holds (default auto)")

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
    return parser


def _annotate(args: argparse.Namespace) -> int:
    from samflow.flows.annotate import annotate_dataset
    from samflow.flows.config import load_config

    from samflow.flows.resources import ResourceShortage

    cfg = load_config(args.config, _with_format(args), args.profile)
    try:
        manifest = annotate_dataset(args.src, args.dst, config=cfg.model_dump(mode="json"))
    except ResourceShortage as exc:  # the cluster cannot host the graph: say what and how to fix
        print(f"samflow annotate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"run_id": manifest["run_id"], "counts": manifest["counts"]}, indent=1))
    return 0


def _with_format(args: argparse.Namespace) -> list[str]:
    return args.overrides + ([f"input.format={args.input_format}"] if args.input_format else [])


def _plan(args: argparse.Namespace) -> int:
    from samflow.flows.annotate import make_plan
    from samflow.flows.config import load_config
    from samflow.flows.inputs import InputFormatError

    cfg = load_config(args.config, _with_format(args))
    try:
        plan = make_plan(args.src, args.dst, cfg, read_only=True)
    except (InputFormatError, FileNotFoundError) as exc:
        print(f"samflow plan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"format": plan.format, "new": plan.new, "done": plan.already_done,
                      "excluded": plan.excluded, "seconds": round(plan.seconds, 3)}))
    return 0


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


HANDLERS = {"plan": _plan, "annotate": _annotate, "export": _export, "models": _models, "submit": _submit}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return HANDLERS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
