"""Prefect flow ``index_dataset``: keep DST's vector indexes up to date (the scheduled side of
``samflow index build|add``).

The first run of a kind builds its index; later runs add only the vectors of shards committed
since, as a new segment (compacted past ``index.max_segments``; an IVF-PQ index retrains itself
once it has outgrown its training set, see samflow/index/commands.py). A run over a DST with
nothing new writes nothing.
Deployed by ``samflow deploy`` and served by ``samflow schedule`` when ``index.schedule`` is set.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from samflow.config import RunConfig, config_from
from samflow.index.commands import RunIndex
from samflow.index.updates import add_to_index, build_index
from samflow.store.catalog import Catalog


# NO_CACHE: the task writes the index; a second call must do the work again.
@task(name="index", cache_policy=NO_CACHE)
def update_index(dst: str, kind: str, cfg: RunConfig) -> dict[str, Any]:
    """Build the ``kind`` index of DST if it has none, else add what was committed since."""
    if RunIndex(dst, cfg.storage).manifest(kind) is None:
        manifest = build_index(dst, kind, storage=cfg.storage)
        manifest["added"] = manifest["count"]
    else:
        manifest = add_to_index(dst, kind, storage=cfg.storage, max_segments=cfg.index.max_segments)
    return {key: value for key, value in manifest.items() if key != "sources"}


def _report(dst: str, summaries: dict[str, dict[str, Any]]) -> str:
    lines = [f"# samflow index {dst}", "", "| kind | vectors | added | type |", "|---|---|---|---|"]
    lines += [f"| {kind} | {s['count']} | {s['added']} | {s['type']} |" for kind, s in summaries.items()]
    return "\n".join(lines) + "\n"


@flow(name="index-dataset")
def index_dataset(dst: str, config: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Update every index in ``config.index.kinds`` of ``dst``; returns each one's manifest
    (without its source list) with ``added``: the vectors this run put in."""
    cfg = config_from(config)
    logger = get_run_logger()
    summaries: dict[str, dict[str, Any]] = {}
    if not Catalog(dst, cfg.storage).committed_names():
        # A schedule's first ticks may come before annotate's first commit: nothing to do yet.
        logger.info("nothing committed under %s yet: no index to build", dst)
        return summaries
    for kind in cfg.index.kinds:
        summaries[kind] = update_index(dst, kind, cfg)
        logger.info("%s index of %s: %d vectors (%d added)", kind, dst,
                    summaries[kind]["count"], summaries[kind]["added"])
    create_markdown_artifact(_report(dst, summaries), key="samflow-index-run", description="samflow index")
    return summaries
