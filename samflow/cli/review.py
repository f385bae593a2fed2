"""``samflow review import DST FILE [--format label-studio|coco]`` (samflow.reviews)."""

from __future__ import annotations

import argparse
import json
import sys

FORMATS = ("label-studio", "coco")  # samflow.reviews.importer.FORMATS


def register(commands: argparse._SubParsersAction) -> None:
    from samflow.cli.options import add_config

    review = commands.add_parser("review", help="bring people's reviews of a run's masks back into DST/reviews/")
    actions = review.add_subparsers(dest="action", required=True)
    imported = actions.add_parser(
        "import", help="a Label Studio JSON export (of `samflow export review` tasks) or a COCO JSON -> DST/reviews/")
    imported.add_argument("dst", help="output URI of an annotate run")
    imported.add_argument("file", help="the exported JSON (path or URI)")
    imported.add_argument("--format", choices=FORMATS, dest="fmt",
                          help="what FILE holds (default: COCO when it has 'images', else Label Studio)")
    add_config(imported)
    imported.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> int:
    from samflow.cli.options import user_config
    from samflow.reviews.importer import import_reviews

    cfg = user_config(args.config, args.overrides, None)
    summary = import_reviews(args.dst, args.file, args.fmt, cfg.storage)
    if summary.get("errors"):
        print(f"samflow review import: {summary['errors']} regions could not be used (rows in "
              f"review_errors/), e.g. {'; '.join(summary['error_examples'])}", file=sys.stderr)
    print(json.dumps(summary, indent=1))
    return 0
