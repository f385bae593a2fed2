"""The ``samflow`` command line (see DESIGN.md, "Interfaces that stay stable")."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import samflow
from samflow import errors
from samflow.cli import logs
from samflow.errors import UserError, user_error

INPUT_FORMATS = ("auto", "files", "manifest", "webdataset", "parquet")  # samflow.inputs.sources.FORMATS


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
    annotate.add_argument("--wait", action="store_true",
                          help="if another run holds DST, wait for it instead of refusing")
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

    runs = commands.add_parser("runs", help="list the runs under DST, or show one run's report")
    runs.add_argument("dst", help="output URI of annotate runs")
    runs.add_argument("run_id", nargs="?", help="show this run's report")
    runs.add_argument("--json", action="store_true", help="print JSON instead of tables")
    runs.add_argument("--config", type=Path, help="YAML run config (its storage settings)")
    runs.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")

    for name, text in (("deploy", "register Prefect deployments of annotate (and the index update) on the config's crons"),
                       ("schedule", "serve annotate's (and the index update's) schedule in the foreground (no worker needed)")):
        scheduled = commands.add_parser(name, help=text)
        scheduled.add_argument("src", help="source URI")
        scheduled.add_argument("--out", required=True, dest="dst", help="output URI")
        scheduled.add_argument("--config", type=Path, help="YAML run config; its `schedule` is the cron")
        scheduled.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
        scheduled.add_argument("--profile", choices=["tiny"])
        scheduled.add_argument("--cron", help="cron string (overrides the config's `schedule`)")
        scheduled.add_argument("--timezone", default="UTC", help="timezone of the cron")
        scheduled.add_argument("--index-cron", help="cron of the index update (overrides the config's `index.schedule`)")
        scheduled.add_argument("--name", help="deployment name (default: annotate, and index for the index update)")
        if name == "deploy":
            scheduled.add_argument("--work-pool", help="work pool whose workers run it (default: none, for `samflow schedule`)")
    return parser


def _add_index_parsers(commands) -> None:
    """index build|add, search, dedup, serve, preview (samflow.index, samflow.index.commands)."""
    index = commands.add_parser("index", help="build or extend the vector index of a run")
    index_commands = index.add_subparsers(dest="action", required=True)
    build = index_commands.add_parser("build", help="build the FAISS index under DST/_index/<kind>/")
    build.add_argument("dst", help="output URI of an annotate run")
    build.add_argument("--kind", choices=["image", "mask"], default="image")
    build.add_argument("--index", choices=["auto", "flat", "ivfpq", "hnsw"], default="auto", dest="index_type")
    _add_model_option(build)
    add = index_commands.add_parser("add", help="add vectors of runs committed since the last build")
    add.add_argument("dst")
    add.add_argument("--kind", choices=["image", "mask"], default="image")
    add.add_argument("--retrain", action="store_true", help="retrain the index on all vectors")
    _add_model_option(add)

    search = commands.add_parser("search", help="search the index by text or image")
    search.add_argument("dst")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image", help="image path or URI")
    search.add_argument("-k", type=int, default=20)
    search.add_argument("--kind", choices=["image", "mask"], default="image")
    search.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    _add_model_option(search)

    dedup = commands.add_parser("dedup", help="exact and near-duplicate groups -> DST/dedup/")
    dedup.add_argument("dst")
    dedup.add_argument("--threshold", type=float, default=0.95, help="cosine similarity of duplicates")
    dedup.add_argument("--kind", choices=["image", "mask"], default="image")
    _add_model_option(dedup)

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


def _add_model_option(parser: argparse.ArgumentParser) -> None:
    from samflow.schemas.tables import EMBEDDING_MODELS

    parser.add_argument("--model", choices=list(EMBEDDING_MODELS), default="clip",
                        help="whose vectors (stages.embed.models; default clip)")


def _index(args: argparse.Namespace) -> int:
    from samflow.index.build import BuildParams, IndexBuildError
    from samflow.index.commands import IndexUserError, add_to_index, build_index

    try:
        if args.action == "build":
            manifest = build_index(args.dst, args.kind, BuildParams(index=args.index_type), model=args.model)
        else:
            manifest = add_to_index(args.dst, args.kind, retrain=args.retrain, model=args.model)
    except (IndexUserError, IndexBuildError) as exc:
        print(f"samflow index {args.action}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in manifest.items() if k != "sources"}, indent=1))
    return 0


def _search(args: argparse.Namespace) -> int:
    from samflow.index.commands import IndexUserError, search

    try:
        hits = search(args.dst, text=args.text, image=args.image, k=args.k, kind=args.kind, model=args.model)
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
    from samflow.index.build import IndexBuildError
    from samflow.index.commands import IndexUserError, dedup

    try:
        summary = dedup(args.dst, threshold=args.threshold, kind=args.kind, model=args.model)
    except (IndexUserError, IndexBuildError) as exc:
        print(f"samflow dedup: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from samflow.serve.app import TOKEN_ENV, serve_forever

    serve_forever(args.dst, args.host, args.port, token=os.environ.get(TOKEN_ENV) or None)
    return 0


def _preview(args: argparse.Namespace) -> int:
    from samflow.index.commands import IndexUserError, write_preview

    try:
        summary = write_preview(args.dst, args.out, queries=args.search, limit=args.limit)
    except IndexUserError as exc:
        print(f"samflow preview: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from samflow.cli.preflight import check_run
    from samflow.cli.progress import RunProgress
    from samflow.store.lease import Lease

    cfg = user_config(args.config, _with_format(args), args.profile)
    check_run(args.src, args.dst, cfg)  # seconds, before Prefect and Ray start
    lease = Lease(args.dst, cfg.storage, ttl_s=cfg.output.lease_ttl_s)
    lease.acquire(wait=args.wait)  # refuses at once when another run writes DST
    try:
        from samflow.flows.annotate import annotate_dataset

        logs.quiet_ray_data(args.verbose)
        ray_was_up = _ray_is_up()
        with logs.native_stderr_to_file(args.verbose, "annotate"), RunProgress() as progress:
            try:
                manifest = annotate_dataset(args.src, args.dst, config=cfg.model_dump(mode="json"),
                                            observer=progress, hold_lease=False)
            finally:
                if not ray_was_up and _ray_is_up():  # now, while Ray's C++ shutdown lines go to the log file
                    sys.modules["ray"].shutdown()
    finally:
        lease.release()
    _print_run_summary(manifest, cfg, progress)
    # For scripts: the last thing on stdout.
    print(json.dumps({"run_id": manifest["run_id"], "counts": manifest["counts"]}, indent=1))
    return 0


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _with_format(args: argparse.Namespace) -> list[str]:
    return args.overrides + ([f"input.format={args.input_format}"] if args.input_format else [])


def _plan(args: argparse.Namespace) -> int:
    from samflow.flows.annotate import make_plan
    from samflow.inputs.sources import InputFormatError

    cfg = user_config(args.config, _with_format(args), None)
    logs.quiet_ray_data(args.verbose)
    try:
        plan = make_plan(args.src, args.dst, cfg, read_only=True)
    except (InputFormatError, FileNotFoundError) as exc:
        print(f"samflow plan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"format": plan.format, "new": plan.new, "done": plan.already_done,
                      "excluded": plan.excluded, "seconds": round(plan.seconds, 3)}))
    return 0


def _print_run_summary(manifest: dict, cfg: object, progress: object) -> None:
    from samflow.store import runs

    console = progress.console  # type: ignore[attr-defined]
    if not manifest.get("run_id"):
        counts = manifest["counts"]
        console.print(f"samflow: nothing new ({counts['listed']} listed, {counts['already_done']} already done)")
        return
    errors = runs.error_kinds(manifest["dst"], manifest["run_id"], cfg.storage) if manifest["counts"]["errors"] else []
    runs.print_report(runs.build_report(manifest, errors), console)


def _runs(args: argparse.Namespace) -> int:
    from rich.console import Console

    from samflow.store import runs

    cfg = user_config(args.config, args.overrides, None)
    console = Console()
    if not console.is_terminal:  # piped or captured: room for whole run ids and model names
        console = Console(width=200)
    if args.run_id:
        report = runs.load_report(args.dst, args.run_id, cfg.storage)
        if args.json:
            print(json.dumps(runs.report_json(report), indent=1))
        else:
            runs.print_report(report, console)
        return 0
    rows = runs.history_rows(runs.manifests(args.dst, cfg.storage))
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        console.print(f"no runs under {args.dst}")
    else:
        console.print(runs.history_table(rows, args.dst))
    return 0


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


def _export(args: argparse.Namespace) -> int:
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


def _models(args: argparse.Namespace) -> int:
    from samflow.models.loading.cache import fetch_model
    from samflow.models.loading.check import check_model
    from samflow.models.loading.registry import ModelLoadError

    try:
        local = fetch_model(args.uri)  # s3:// / https:// models go through the node's cache
        facts = check_model(local, family=args.family)
        if local != args.uri:
            facts.update(uri=args.uri, local_path=local)
        print(json.dumps(facts, indent=1))
    except ModelLoadError as exc:
        print(f"samflow models check: {exc}", file=sys.stderr)
        return 2
    return 0


def _submit(args: argparse.Namespace) -> int:
    from samflow.cli.submit import run_submit

    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not job:
        raise SystemExit("samflow submit: give the samflow command to run, e.g. annotate SRC --out DST")
    return run_submit(args.address, job, working_dir=args.working_dir, wait=not args.no_wait,
                      pip=False if args.no_pip else None)


def _scheduled_deployments(args: argparse.Namespace):  # noqa: ANN202
    """annotate's deployment, and the index update's when ``index.schedule`` (or --index-cron) is set."""
    from samflow.flows.deployments import build_deployment, build_index_deployment

    overrides = list(args.overrides) + ([f"schedule={json.dumps(args.cron)}"] if args.cron else [])
    overrides += [f"index.schedule={json.dumps(args.index_cron)}"] if args.index_cron else []
    cfg = user_config(args.config, overrides, None)
    pool = getattr(args, "work_pool", None)
    try:
        deployments = [build_deployment(args.src, args.dst, config=cfg, profile=args.profile,
                                        name=args.name or "annotate", timezone=args.timezone, work_pool_name=pool)]
    except ValueError as exc:  # a malformed cron or timezone
        raise UserError(f"schedule {cfg.schedule!r} ({args.timezone}): {errors.one_line(exc)}") from exc
    if cfg.index.schedule:
        try:
            deployments.append(build_index_deployment(args.dst, config=cfg, name=args.name or "index",
                                                      timezone=args.timezone, work_pool_name=pool))
        except ValueError as exc:
            raise UserError(f"index.schedule {cfg.index.schedule!r} ({args.timezone}): {errors.one_line(exc)}") from exc
    return deployments, cfg


def _cron_of(deployment, timezone: str) -> str:  # noqa: ANN001
    crons = [s.schedule.cron for s in deployment.schedules]
    return f"{crons[0]} {timezone}" if crons else "none (on demand)"


def _deploy(args: argparse.Namespace) -> int:
    deployments, _ = _scheduled_deployments(args)
    where = f"work pool {args.work_pool}" if args.work_pool else "no work pool: run `samflow schedule` with the same arguments"
    for deployment in deployments:
        deployment_id = deployment.apply(work_pool_name=args.work_pool)
        print(f"deployment {deployment.flow_name}/{deployment.name} ({deployment_id}); "
              f"schedule: {_cron_of(deployment, args.timezone)}; {where}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from prefect import serve

    deployments, cfg = _scheduled_deployments(args)
    if not cfg.schedule and not cfg.index.schedule:
        raise UserError("no schedule: set `schedule` (or `index.schedule`) in the config or give --cron '0 2 * * *'")
    for deployment in deployments:
        print(f"serving {deployment.flow_name}/{deployment.name} on {_cron_of(deployment, args.timezone)}",
              file=sys.stderr)
    print("Ctrl-C stops", file=sys.stderr)
    serve(*deployments, print_starting_message=bool(args.verbose))
    return 0


HANDLERS = {"plan": _plan, "annotate": _annotate, "export": _export, "models": _models, "submit": _submit, "runs": _runs,
            "deploy": _deploy, "schedule": _schedule}
HANDLERS.update({"index": _index, "search": _search, "dedup": _dedup, "serve": _serve, "preview": _preview})


def main(argv: list[str] | None = None) -> int:
    # FAISS's OpenMP threads sleep instead of spinning while idle: on a busy (shared) CPU spinning
    # workers make index builds several times slower. Read once, when faiss loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = errors.with_verbose_flag(_parser()).parse_args(argv)
    with logs.console(args.verbose):
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing
        try:
            return HANDLERS[args.command](args)
        except Exception as exc:  # noqa: BLE001 - every failure ends in one clear line and an exit code
            return errors.report_failure(exc, f"samflow {args.command}", args.verbose)


if __name__ == "__main__":
    sys.exit(main())
