"""``samflow index build|add``, ``search``, ``dedup``, ``preview``: the vector index of a run."""

from __future__ import annotations

import argparse
import json
import sys

from samflow.cli import options


def register(commands: argparse._SubParsersAction) -> None:
    index = commands.add_parser("index", help="build or extend the vector index of a run")
    index.set_defaults(run=run_index)
    index_commands = index.add_subparsers(dest="action", required=True)
    build = index_commands.add_parser("build", help="build the FAISS index under DST/_index/<kind>/")
    build.add_argument("dst", help="output URI of an annotate run")
    build.add_argument("--kind", choices=["image", "mask"], default="image")
    build.add_argument("--index", choices=["auto", "flat", "ivfpq", "hnsw"], default="auto", dest="index_type")
    build.add_argument("--ray-tasks", type=int, default=0, metavar="N",
                       help="encode the vectors with up to N Ray tasks across the cluster (RAY_ADDRESS, else a local Ray)")
    options.add_embedding_model(build)
    add = index_commands.add_parser("add", help="add vectors of runs committed since the last build")
    add.add_argument("dst")
    add.add_argument("--kind", choices=["image", "mask"], default="image")
    add.add_argument("--retrain", action="store_true", help="retrain the index on all vectors")
    add.add_argument("--max-segments", type=int, default=None,
                     help="compact once the index has more segments than this (default: index.max_segments, 8)")
    options.add_embedding_model(add)
    compact = index_commands.add_parser("compact", help="merge the index's segments into one")
    compact.add_argument("dst")
    compact.add_argument("--kind", choices=["image", "mask"], default="image")
    options.add_embedding_model(compact)

    search = commands.add_parser("search", help="search the index by text or image")
    search.add_argument("dst")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image", help="image path or URI")
    search.add_argument("-k", type=int, default=20)
    search.add_argument("--kind", choices=["image", "mask"], default="image")
    search.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    options.add_embedding_model(search)
    search.set_defaults(run=run_search)

    dedup = commands.add_parser("dedup", help="exact and near-duplicate groups -> DST/dedup/")
    dedup.add_argument("dst")
    dedup.add_argument("--threshold", type=float, default=0.95, help="cosine similarity of duplicates")
    dedup.add_argument("--kind", choices=["image", "mask"], default="image")
    options.add_embedding_model(dedup)
    dedup.set_defaults(run=run_dedup)

    preview = commands.add_parser("preview", help="static HTML gallery of a run, with search results")
    preview.add_argument("dst")
    preview.add_argument("--out", required=True, help="HTML file to write (path or URI)")
    preview.add_argument("--search", action="append", default=[], metavar="TEXT",
                         help="add a search-results page for this text (repeatable; needs the image index)")
    preview.add_argument("--limit", type=int, default=500, help="images in the gallery (default 500)")
    preview.set_defaults(run=run_preview)


def run_index(args: argparse.Namespace) -> int:
    from samflow.index.build import IndexBuildError
    from samflow.index.commands import IndexUserError
    from samflow.index.updates import (
        MAX_SEGMENTS,
        add_to_index,
        compact_index,
    )

    try:
        if args.action == "build":
            manifest = _build(args)
        elif args.action == "compact":
            manifest = compact_index(args.dst, args.kind, model=args.model)
        else:
            if args.max_segments is not None and args.max_segments < 1:
                raise IndexUserError(f"--max-segments must be at least 1 (got {args.max_segments})")
            manifest = add_to_index(args.dst, args.kind, retrain=args.retrain, model=args.model,
                                    max_segments=args.max_segments or MAX_SEGMENTS)
    except (IndexUserError, IndexBuildError) as exc:
        print(f"samflow index {args.action}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in manifest.items() if k != "sources"}, indent=1))
    return 0


def _build(args: argparse.Namespace) -> dict:
    from samflow.cli.session import stopping_ray_started_here
    from samflow.config import RayConfig
    from samflow.index.build import BuildParams
    from samflow.index.commands import IndexUserError
    from samflow.index.updates import build_index

    if args.ray_tasks < 0:
        raise IndexUserError(f"--ray-tasks must be 0 or more (got {args.ray_tasks})")
    params = BuildParams(index=args.index_type)
    if not args.ray_tasks:
        return build_index(args.dst, args.kind, params, model=args.model)
    from samflow.pipeline.index_parts import ray_parallel
    from samflow.pipeline.graph import ensure_ray

    with stopping_ray_started_here():
        ensure_ray(RayConfig())
        return build_index(args.dst, args.kind, params, model=args.model, parallel=ray_parallel(args.ray_tasks))


def run_search(args: argparse.Namespace) -> int:
    from samflow.index.commands import IndexUserError, in_code_notice, search

    try:
        hits = search(args.dst, text=args.text, image=args.image, k=args.k, kind=args.kind, model=args.model)
    except IndexUserError as exc:
        print(f"samflow search: {exc}", file=sys.stderr)
        return 2
    _print_notice(in_code_notice(args.dst, args.kind, args.model))
    if args.json:
        print(json.dumps(hits))
        return 0
    for hit in hits:
        extra = f"  {hit['annotation_id']} {hit.get('label') or ''}" if args.kind == "mask" else ""
        print(f"{hit['score']:.4f}  {hit['uri']}{extra}")
    return 0


def run_dedup(args: argparse.Namespace) -> int:
    from samflow.index.build import IndexBuildError
    from samflow.index.commands import IndexUserError, dedup, in_code_notice

    try:
        summary = dedup(args.dst, threshold=args.threshold, kind=args.kind, model=args.model)
    except (IndexUserError, IndexBuildError) as exc:
        print(f"samflow dedup: {exc}", file=sys.stderr)
        return 2
    _print_notice(in_code_notice(args.dst, args.kind, args.model))
    print(json.dumps(summary, indent=1))
    return 0


def _print_notice(notice: str | None) -> None:
    if notice:  # on stderr, so --json output stays one parseable document
        print(notice, file=sys.stderr)


def run_preview(args: argparse.Namespace) -> int:
    from samflow.index.commands import IndexUserError
    from samflow.index.gallery import write_preview

    try:
        summary = write_preview(args.dst, args.out, queries=args.search, limit=args.limit)
    except IndexUserError as exc:
        print(f"samflow preview: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0
