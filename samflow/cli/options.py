"""Options shared by several commands, declared once, and the run config they produce."""

from __future__ import annotations

import argparse
from pathlib import Path

from samflow import errors
from samflow.errors import UserError, user_error
from samflow.inputs import INPUT_FORMATS


def add_source_and_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source URI: local path, file://, s3://bucket/prefix")
    parser.add_argument("--out", required=True, dest="dst", help="output URI")


def add_config(parser: argparse.ArgumentParser, profile: bool = False) -> None:
    """--config FILE and repeatable --set KEY=VALUE (and --profile tiny where a run loads models)."""
    parser.add_argument("--config", type=Path, help="YAML run config")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="override one config key (repeatable)")
    if profile:
        parser.add_argument("--profile", choices=["tiny"], help="tiny: offline dry run on tiny:// models")


def add_deploy(parser: argparse.ArgumentParser) -> None:
    """--deploy (register a Prefect deployment instead of running), --cron and --work-pool."""
    parser.add_argument("--deploy", action="store_true", help="register a Prefect deployment instead of running")
    parser.add_argument("--cron", help="with --deploy: cron schedule (default: on demand)")
    parser.add_argument("--work-pool", help="with --deploy: work pool whose workers run it")


def add_input_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-format", choices=INPUT_FORMATS,
                        help="what SRC holds (config input.format; default auto: detected)")


def add_embedding_model(parser: argparse.ArgumentParser) -> None:
    from samflow.schemas.tables import EMBEDDING_MODELS

    parser.add_argument("--model", choices=list(EMBEDDING_MODELS), default="clip",
                        help="whose vectors (stages.embed.models; default clip)")


def with_format(args: argparse.Namespace) -> list[str]:
    """The --set overrides, plus --input-format as the config key it stands for."""
    return args.overrides + ([f"input.format={args.input_format}"] if args.input_format else [])


def user_config(path: Path | None, overrides: list[str], profile: str | None):  # noqa: ANN201
    """load_config, with a malformed file, override or profile reported as a UserError."""
    import yaml

    from samflow.config import load_config

    try:
        return load_config(path, overrides, profile)
    except (ValueError, yaml.YAMLError, OSError) as exc:
        mapped = user_error(exc)
        if mapped is not None:
            raise mapped from exc
        raise UserError(f"config: {errors.one_line(exc)}") from exc
