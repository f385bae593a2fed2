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
                        help="annotation sources considered (repeatable; default: concept, in semi mode all "
                             "but ground_truth)")
    _add_semi_options(review)
    mot = export_formats.add_parser(
        "mot", help="MOTChallenge sequences (frames in img1/, seqinfo.ini, gt/gt.txt of the tracked masks)")
    mot.add_argument("dst", help="output URI of an annotate run")
    mot.add_argument("out", type=Path, help="directory to write one sequence folder per video into")
    ytvis = export_formats.add_parser(
        "ytvis", help="YouTube-VIS JSON (videos, per-track per-frame RLE) and its frames in JPEGImages/")
    ytvis.add_argument("dst", help="output URI of an annotate run")
    ytvis.add_argument("out", type=Path, help="JSON file to write (frames go to JPEGImages/ beside it)")


def _add_semi_options(review: argparse.ArgumentParser) -> None:
    from samflow.exporters.semi import SemiParams

    defaults = SemiParams()
    review.add_argument("--mode", choices=["doubtful", "semi"], default="doubtful",
                        help="doubtful (default): the masks that failed verification or score low; semi: every "
                             "image's sure masks pre-accepted, people asked for the doubtful ones and the "
                             "regions no mask covers")
    review.add_argument("--min-iou", type=float, default=defaults.min_iou,
                        help=f"semi: a sure mask's predicted IoU is at least this (default {defaults.min_iou})")
    review.add_argument("--min-stability", type=float, default=defaults.min_stability,
                        help=f"semi: a sure mask's stability is at least this (default {defaults.min_stability})")
    review.add_argument("--max-uncovered", type=int, default=defaults.max_uncovered,
                        help=f"semi: uncovered regions per image, largest first (default {defaults.max_uncovered})")
    review.add_argument("--min-uncovered", type=float, default=defaults.min_uncovered_fraction,
                        help="semi: smallest uncovered region, as a fraction of the image "
                             f"(default {defaults.min_uncovered_fraction})")


def _semi(args: argparse.Namespace):
    from samflow.exporters.semi import SemiParams

    if args.mode != "semi":
        return None
    return SemiParams(min_iou=args.min_iou, min_stability=args.min_stability, min_score=args.min_score,
                      max_uncovered=args.max_uncovered, min_uncovered_fraction=args.min_uncovered,
                      sources=tuple(args.sources) if args.sources else None)


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
        "review": lambda dst, out: export_review(dst, out, min_score=args.min_score, sources=args.sources,
                                                 semi=_semi(args)),
    }
    try:
        summary = exporters[args.format](args.dst, args.out)
    except NothingToExport as exc:
        print(f"samflow export {args.format}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
