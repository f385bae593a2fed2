"""``samflow eval DST --gt GT [--json]``: quality figures of a run's masks (samflow.eval)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

FIGURES = ("miou", "recall_50", "recall_75", "mask_ap", "mask_ap50", "mask_ap75", "mask_ar100")
COUNTS = ("images", "gt_masks", "pred_masks", "unknown_images", "size_mismatch", "bad_annotations")


def register(commands: argparse._SubParsersAction) -> None:
    from samflow.cli.options import add_config
    from samflow.eval import RUN_GT

    parser = commands.add_parser("eval", help="score a run's masks against ground truth -> DST/_eval/")
    parser.add_argument("dst", help="output URI of an annotate run")
    parser.add_argument("--gt", default=RUN_GT, metavar="GT",
                        help=f"COCO instances JSON (path or URI), or {RUN_GT!r} (default): the run's own "
                             "ground truth (SA-1B sidecars and imported reviews)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_config(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from samflow.cli.options import user_config
    from samflow.eval.evaluate import evaluate

    cfg = user_config(args.config, args.overrides, None)
    result = evaluate(args.dst, args.gt, cfg.storage)
    for line in result["warnings"]:
        print(f"samflow eval: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_table(result)
    return 0


def _print_table(result: dict[str, Any]) -> None:
    from rich.table import Table

    from samflow.cli.logs import report_console

    console = report_console()
    table = Table(title=f"eval {result['eval_id']} of {result['dst']} against {result['gt']}", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name in FIGURES:
        table.add_row(name, f"{result[name]:.4f}")
    for name in COUNTS:
        table.add_row(name, str(result[name]))
    console.print(table)
    if result.get("per_category"):
        categories = Table(title="per category")
        for name in ("category", "mask_ap", "mask_ap50"):
            categories.add_column(name, justify="left" if name == "category" else "right")
        for name, figures in result["per_category"].items():
            categories.add_row(name, f"{figures['mask_ap']:.4f}", f"{figures['mask_ap50']:.4f}")
        console.print(categories)
    console.print(f"recorded: {result.get('path', '-')}")
