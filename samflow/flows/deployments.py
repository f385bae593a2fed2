"""Prefect deployments of the annotate flow, scheduled by the run config's ``schedule`` (cron).

Two ways to run them:
- ``serve``: this process registers the deployment and runs its scheduled runs itself (no work
  pool, no worker): ``python -m samflow.flows.deployments SRC DST --config run.yaml --serve``.
- a work pool: register it for a worker (``prefect worker start --pool samflow``, the compose
  service) to run: ``python -m samflow.flows.deployments SRC DST --config run.yaml --work-pool samflow``.
infra/prefect.yaml declares the same deployment for ``prefect deploy``.

The index update (samflow/flows/index_flow.py) has its own deployment, on the config's
``index.schedule``: :func:`build_index_deployment`.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samflow.config import RunConfig, load_config
from samflow.store.storage import absolute

if TYPE_CHECKING:  # Prefect is imported lazily: building the CLI must not pay for it.
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

FLOW_MODULE = "samflow.flows.annotate"
FLOW_FUNCTION = "annotate_dataset"
# The file-path form of the same entrypoint, as infra/prefect.yaml writes it.
FLOW_ENTRYPOINT = "samflow/flows/annotate.py:annotate_dataset"
DEFAULT_WORK_POOL = "samflow"
DEFAULT_NAME = "annotate"
INDEX_FLOW_MODULE = "samflow.flows.index_flow"
INDEX_FLOW_FUNCTION = "index_dataset"
INDEX_FLOW_ENTRYPOINT = "samflow/flows/index_flow.py:index_dataset"
DEFAULT_INDEX_NAME = "index"


def load_annotate_flow() -> Flow:
    # Lazy: the flow module pulls in Ray Data and the models.
    return getattr(importlib.import_module(FLOW_MODULE), FLOW_FUNCTION)


def load_index_flow() -> Flow:
    return getattr(importlib.import_module(INDEX_FLOW_MODULE), INDEX_FLOW_FUNCTION)


def resolve_config(config: RunConfig | Mapping[str, Any] | str | Path | None) -> RunConfig:
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, (str, Path)):
        return load_config(config)
    return RunConfig.model_validate(dict(config))


def cron_schedules(cron: str | None, timezone: str = "UTC") -> list[Any]:
    """The deployment's schedules: one cron schedule, or none (runs only on demand).
    Raises ValueError for a malformed cron string or an unknown timezone."""
    if not cron:
        return []
    from prefect.client.schemas.schedules import CronSchedule

    return [CronSchedule(cron=cron, timezone=timezone)]


def flow_parameters(src: str, dst: str, config: RunConfig, profile: str | None) -> dict[str, Any]:
    # Only what the user set: the flow applies defaults (and the profile) itself, so a profile
    # is not shadowed by defaults frozen into the deployment.
    tree = config.model_dump(mode="json", exclude_unset=True)
    return {"src": absolute(src), "dst": absolute(dst), "config": tree or None, "profile": profile}


def build_deployment(
    src: str,
    dst: str,
    *,
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    profile: str | None = None,
    name: str = DEFAULT_NAME,
    timezone: str = "UTC",
    work_pool_name: str | None = None,
    flow: Flow | None = None,
) -> RunnerDeployment:
    """A deployment of annotate_dataset(src, dst, config, profile) on the config's cron schedule."""
    run_config = resolve_config(config)
    return scheduled_deployment(
        flow or load_annotate_flow(), name=name, parameters=flow_parameters(src, dst, run_config, profile),
        cron=run_config.schedule, timezone=timezone, work_pool_name=work_pool_name,
        command="annotate", description=f"samflow annotate {src} -> {dst}",
    )


def scheduled_deployment(
    flow: Flow, *, name: str, parameters: dict[str, Any], cron: str | None, command: str, description: str,
    timezone: str = "UTC", work_pool_name: str | None = None,
) -> RunnerDeployment:
    """``flow`` with ``parameters`` as a deployment on ``cron`` (none: on demand only).

    Runs of one deployment never overlap (concurrency limit 1): a slow night must finish before
    the next starts, and every samflow flow is incremental, so a skipped tick loses nothing.
    Raises ValueError for a malformed cron string or an unknown timezone.
    """
    from prefect.deployments.runner import EntrypointType

    return flow.to_deployment(
        name=name,
        schedules=cron_schedules(cron, timezone),
        parameters=parameters,
        concurrency_limit=1,
        description=description,
        tags=["samflow", command],
        work_pool_name=work_pool_name,
        # A module path loads wherever samflow is installed (the image), whatever the cwd.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def build_index_deployment(
    dst: str,
    *,
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    name: str = DEFAULT_INDEX_NAME,
    timezone: str = "UTC",
    work_pool_name: str | None = None,
    flow: Flow | None = None,
) -> RunnerDeployment:
    """A deployment of index_dataset(dst, config) on the config's ``index.schedule`` (none: on
    demand only). Runs never overlap: two builds of one index must not race."""
    run_config = resolve_config(config)
    tree = run_config.model_dump(mode="json", exclude_unset=True)
    return scheduled_deployment(
        flow or load_index_flow(), name=name, parameters={"dst": absolute(dst), "config": tree or None},
        cron=run_config.index.schedule, timezone=timezone, work_pool_name=work_pool_name,
        command="index", description=f"samflow index build|add {dst}",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m samflow.flows.deployments",
        description="Register a scheduled Prefect deployment of `samflow annotate`.",
    )
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--config", help="run config YAML; its `schedule` is the cron")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--profile", help="e.g. tiny (offline dry run)")
    parser.add_argument("--name", default=DEFAULT_NAME, help="deployment name")
    parser.add_argument("--timezone", default="UTC", help="timezone of the cron schedule")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--work-pool", help=f"register for a worker of this pool (e.g. {DEFAULT_WORK_POOL})")
    mode.add_argument("--serve", action="store_true", help="register and run scheduled runs here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = load_config(args.config, args.overrides)
    deployment = build_deployment(
        args.src, args.dst, config=config, profile=args.profile, name=args.name,
        timezone=args.timezone, work_pool_name=args.work_pool,
    )
    if args.serve:
        from prefect import serve

        serve(deployment)
        return 0
    deployment_id = deployment.apply(work_pool_name=args.work_pool)
    print(f"deployment {deployment.flow_name}/{deployment.name} ({deployment_id}) "
          f"on pool {args.work_pool}, schedule: {config.schedule or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
