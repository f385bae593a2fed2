"""``samflow export coco|review|mot|ytvis DST OUT``: committed tables to other tools' formats."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export annotations")
    export.set_defaults(run=run_export)
    export_formats = export.add_subparsers(dest="format", required=True)
    coco = export_formats.add_parser("coco", help="COCO / SA-1B JSON")
    coco.add_argument("dst", help="output URI of an annotate run")
    coco.add_argument("out", type=Path, help="JSON file to write")
    review = export_formats.add_parser(
        "review", help="Label Studio tasks (brush predictions) of masks that failed verification or score low")
    review.add_argument("dst", help="output URI of an annotate run")
    review.add_argument("out", type=Path, help="tasks JSON to import (the labeling config goes beside it, .xml)")
    review.add_argument("--min-score", type=float, default=0.5, help="masks scoring under this go to review")
    review.add_argument("--source", action="append", dest="sources", metavar="SOURCE",
                        help="annotation sources considered (repeatable; default: concept)")
    mot = export_formats.add_parser("mot", help="MOTChallenge text, one file per video (tracked masks)")
    mot.add_argument("dst", help="output URI of an annotate run")
    mot.add_argument("out", type=Path, help="directory to write <video>.txt files into")
    ytvis = export_formats.add_parser("ytvis", help="YouTube-VIS JSON (videos, per-track per-frame RLE)")
    ytvis.add_argument("dst", help="output URI of an annotate run")
    ytvis.add_argument("out", type=Path, help="JSON file to write")


def run_export(args: argparse.Namespace) -> int:
    from samflow.exporters.commands import (
        NothingToExport,
        export_coco,
        export_mot,
        export_review,
        export_ytvis,
    )

    exporters = {
        "coco": export_coco, "mot": export_mot, "ytvis": export_ytvis,
        "review": lambda dst, out: export_review(dst, out, min_score=args.min_score, sources=args.sources),
    }
    try:
        summary = exporters[args.format](args.dst, args.out)
    except NothingToExport as exc:
        print(f"samflow export {args.format}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
