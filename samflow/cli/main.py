"""The ``samflow`` command line: one module per command group (docs/architecture.md, "Interfaces")."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import samflow
from samflow import errors
from samflow.cli import (
    annotate,
    export,
    index,
    logs,
    models,
    review,
    schedule,
    serve,
    submit,
    synth,
    train,
)
from samflow.cli import eval as evaluate

# Each group module adds its subcommands and sets ``run``; a new command group is one entry here.
COMMAND_GROUPS = (annotate, export, models, submit, index, serve, schedule, evaluate, review, synth, train)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"samflow {samflow.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    # FAISS's OpenMP threads sleep instead of spinning while idle: on a busy (shared) CPU spinning
    # workers make index builds several times slower. Read once, when faiss loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = errors.with_verbose_flag(_parser()).parse_args(argv)
    with logs.console(args.verbose):
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing
        try:
            return args.run(args)
        except Exception as exc:  # noqa: BLE001 - every failure ends in one clear line and an exit code
            return errors.report_failure(exc, f"samflow {args.command}", args.verbose)


if __name__ == "__main__":
    sys.exit(main())
