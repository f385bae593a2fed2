"""Prefect flow ``engine_round``: one round of the data engine over SRC, scored on HOLDOUT.

    annotate SRC -> DST with the current model     (DST's tables grow; ground truth rides along)
    annotate HOLDOUT with the current model, eval  (DST/_rounds/<id>/before/)
    train on DST's ground truth and reviews        (DST/_rounds/<id>/model/)
    annotate HOLDOUT with the new model, eval      (DST/_rounds/<id>/after/)
    keep the new model only if it scores higher    (DST/_rounds/<id>.json)

HOLDOUT carries its own ground truth (SA-1B sidecars), scored with ``samflow eval --gt run``;
it is never trained on. The current model is the one the newest round kept, else the config's
``stages.segment.model``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from samflow.config import RunConfig, config_from
from samflow.eval.evaluate import evaluate
from samflow.flows.annotate import annotate_dataset
from samflow.rounds.record import current_model, figures, keeps_new_model, write_round
from samflow.store.catalog import ROUNDS
from samflow.store.runs import record_id
from samflow.store.storage import absolute, join

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment


def _with_segment_model(cfg: RunConfig, uri: str) -> dict[str, Any]:
    tree = cfg.model_dump(mode="json")
    tree["stages"]["segment"]["model"] = uri
    return tree


@task(name="evaluate", cache_policy=NO_CACHE)
def score(dst: str, cfg: RunConfig) -> dict[str, Any]:
    """DST's masks against its own ground-truth rows."""
    return evaluate(dst, storage=cfg.storage)


@task(name="train", cache_policy=NO_CACHE)
def fine_tune(dst: str, out_uri: str, cfg: RunConfig, base: str) -> dict[str, Any]:
    from samflow.train.run import train_model

    return train_model(dst, out_uri, cfg, base=base)


def _model_facts(manifest: dict[str, Any]) -> dict[str, Any]:
    segment = (manifest.get("models") or {}).get("segment") or {}
    return {"uri": segment.get("model"), "sha256": segment.get("checkpoint_sha256")}


@flow(name="engine-round")
def engine_round(src: str, dst: str, holdout: str, config: dict[str, Any] | None = None,
                 profile: str | None = None) -> dict[str, Any]:
    """Run one round; returns its record (also written to ``DST/_rounds/<round_id>.json``)."""
    cfg = config_from(config, profile=profile)
    src, dst, holdout = absolute(src), absolute(dst), absolute(holdout)
    logger = get_run_logger()
    round_id = record_id()
    started = dt.datetime.now(dt.UTC).isoformat()
    current = current_model(dst, cfg.storage, cfg.stages.segment.model)
    folder = join(dst, ROUNDS, round_id)
    logger.info("round %s: current model %s", round_id, current)
    annotated = annotate_dataset(src, dst, config=_with_segment_model(cfg, current))
    before_run = annotate_dataset(holdout, join(folder, "before"), config=_with_segment_model(cfg, current))
    before = score(join(folder, "before"), cfg)
    trained = join(folder, "model")
    lineage = fine_tune(dst, trained, cfg, current)
    after_run = annotate_dataset(holdout, join(folder, "after"), config=_with_segment_model(cfg, trained))
    after = score(join(folder, "after"), cfg)
    kept = keeps_new_model(before, after)
    record = {
        "round_id": round_id, "started_at": started, "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "src": src, "holdout": holdout,
        "model_before": _model_facts(before_run), "model_after": _model_facts(after_run),
        "current_model": trained if kept else current, "replaced": kept,
        "annotate_run": annotated.get("run_id"), "train": {"data": lineage["data"], "epochs_done": lineage["epochs_done"],
                                                           "stopped": lineage["stopped"]},
        "holdout_before": figures(before), "holdout_after": figures(after),
    }
    record["path"] = write_round(dst, cfg.storage, record)
    logger.info("round %s: held-out mIoU %.4f -> %.4f; %s", round_id, before["miou"], after["miou"],
                "the new model is current" if kept else "the current model stays")
    return record


def build_round_deployment(
    src: str, dst: str, holdout: str, *, config: RunConfig, profile: str | None = None, cron: str | None = None,
    name: str = "engine-round", timezone: str = "UTC", work_pool_name: str | None = None,
) -> RunnerDeployment:
    """``engine_round(src, dst, holdout, config, profile)`` as a deployment: on ``cron``, or on demand.
    Each run starts from the model the newest round kept, so scheduled rounds follow each other."""
    from samflow.flows.deployments import scheduled_deployment

    tree = config.model_dump(mode="json", exclude_unset=True)
    parameters = {"src": absolute(src), "dst": absolute(dst), "holdout": absolute(holdout),
                  "config": tree or None, "profile": profile}
    return scheduled_deployment(
        engine_round, name=name, parameters=parameters, cron=cron, timezone=timezone,
        work_pool_name=work_pool_name, command="engine-round", description=f"samflow engine-round {src} -> {dst}",
    )
