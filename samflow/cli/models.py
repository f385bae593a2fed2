"""``samflow models check URI``: load a model or checkpoint and describe it."""

from __future__ import annotations

import argparse
import json
import sys


def register(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="model utilities")
    models.set_defaults(run=run_models)
    model_commands = models.add_subparsers(dest="action", required=True)
    check = model_commands.add_parser("check", help="load a model or checkpoint and describe it")
    check.add_argument("uri")
    check.add_argument("--family")


def run_models(args: argparse.Namespace) -> int:
    from samflow.models.loading.check import check_model
    from samflow.models.loading.registry import ModelLoadError

    try:  # s3:// / https:// models go through the node's model cache
        print(json.dumps(check_model(args.uri, family=args.family), indent=1))
    except ModelLoadError as exc:
        print(f"samflow models check: {exc}", file=sys.stderr)
        return 2
    return 0
