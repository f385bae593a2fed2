"""The ``samflow`` command line (see DESIGN.md, "Interfaces that stay stable")."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import samflow


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

    export = commands.add_parser("export", help="export annotations")
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
    _add_index_parsers(commands)
    return parser


def _add_index_parsers(commands) -> None:
    """index build|add, search, dedup, serve, preview (samflow.index, samflow.flows.index)."""
    index = commands.add_parser("index", help="build or extend the vector index of a run")
    index_commands = index.add_subparsers(dest="action", required=True)
    build = index_commands.add_parser("build", help="build the FAISS index under DST/_index/<kind>/")
    build.add_argument("dst", help="output URI of an annotate run")
    build.add_argument("--kind", choices=["image", "mask"], default="image")
    build.add_argument("--index", choices=["auto", "flat", "ivfpq", "hnsw"], default="auto", dest="index_type")
    add = index_commands.add_parser("add", help="add vectors of runs committed since the last build")
    add.add_argument("dst")
    add.add_argument("--kind", choices=["image", "mask"], default="image")
    add.add_argument("--retrain", action="store_true", help="retrain the index on all vectors")

    search = commands.add_parser("search", help="search the index by text or image")
    search.add_argument("dst")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image", help="image path or URI")
    search.add_argument("-k", type=int, default=20)
    search.add_argument("--kind", choices=["image", "mask"], default="image")
    search.add_argument("--json", action="store_true", help="one JSON array instead of a table")

    dedup = commands.add_parser("dedup", help="exact and near-duplicate groups -> DST/dedup/")
    dedup.add_argument("dst")
    dedup.add_argument("--threshold", type=float, default=0.95, help="cosine similarity of duplicates")
    dedup.add_argument("--kind", choices=["image", "mask"], default="image")

    serve = commands.add_parser("serve", help="HTTP search / embed / segment over a run (Ray Serve)")
    serve.add_argument("dst")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    serve.add_argument("--port", type=int, default=8000)

    preview = commands.add_parser("preview", help="static HTML gallery of a run, with search results")
    preview.add_argument("dst")
    preview.add_argument("--out", required=True, help="HTML file to write (path or URI)")
    preview.add_argument("--search", action="append", default=[], metavar="TEXT",
                         help="add a search-results page for this text (repeatable; needs the image index)")
    preview.add_argument("--limit", type=int, default=500, help="images in the gallery (default 500)")


def _index(args: argparse.Namespace) -> int:
    from samflow.flows.index import IndexUserError, add_to_index, build_index
    from samflow.index.build import BuildParams, IndexBuildError

    try:
        if args.action == "build":
            manifest = build_index(args.dst, args.kind, BuildParams(index=args.index_type))
        else:
            manifest = add_to_index(args.dst, args.kind, retrain=args.retrain)
    except (IndexUserError, IndexBuildError) as exc:
        print(f"samflow index {args.action}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in manifest.items() if k != "sources"}, indent=1))
    return 0


def _search(args: argparse.Namespace) -> int:
    from samflow.flows.index import IndexUserError, search

    try:
        hits = search(args.dst, text=args.text, image=args.image, k=args.k, kind=args.kind)
    except IndexUserError as exc:
        print(f"samflow search: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(hits))
        return 0
    for hit in hits:
        extra = f"  {hit['annotation_id']} {hit.get('label') or ''}" if args.kind == "mask" else ""
        print(f"{hit['score']:.4f}  {hit['uri']}{extra}")
    return 0


def _dedup(args: argparse.Namespace) -> int:
    from samflow.flows.index import IndexUserError, dedup
    from samflow.index.build import IndexBuildError

    try:
        summary = dedup(args.dst, threshold=args.threshold, kind=args.kind)
    except (IndexUserError, IndexBuildError) as exc:
        print(f"samflow dedup: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from samflow.flows.serve import TOKEN_ENV, serve_forever

    serve_forever(args.dst, args.host, args.port, token=os.environ.get(TOKEN_ENV) or None)
    return 0


def _preview(args: argparse.Namespace) -> int:
    from samflow.flows.index import IndexUserError, write_preview

    try:
        summary = write_preview(args.dst, args.out, queries=args.search, limit=args.limit)
    except IndexUserError as exc:
        print(f"samflow preview: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from samflow.flows.annotate import annotate_dataset
    from samflow.flows.config import load_config

    from samflow.flows.resources import ResourceShortage

    cfg = load_config(args.config, args.overrides, args.profile)
    try:
        manifest = annotate_dataset(args.src, args.dst, config=cfg.model_dump(mode="json"))
    except ResourceShortage as exc:  # the cluster cannot host the graph: say what and how to fix
        print(f"samflow annotate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"run_id": manifest["run_id"], "counts": manifest["counts"]}, indent=1))
    return 0


def _export(args: argparse.Namespace) -> int:
    from samflow.flows.export import NothingToExport, export_coco, export_mot, export_review, export_ytvis

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


HANDLERS = {"annotate": _annotate, "export": _export, "models": _models, "submit": _submit}
HANDLERS.update({"index": _index, "search": _search, "dedup": _dedup, "serve": _serve, "preview": _preview})


def main(argv: list[str] | None = None) -> int:
    # FAISS's OpenMP threads sleep instead of spinning while idle: on a busy (shared) CPU spinning
    # workers make index builds several times slower. Read once, when faiss loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing
    return HANDLERS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
