"""Stage contexts for tests that build a stage by hand (the pipeline builds the same one)."""

from __future__ import annotations

from typing import Any

from samflow.actors.stage import StageContext
from samflow.config import config_from
from samflow.store.storage import StorageSource


def context(tree: dict[str, Any] | None = None, dst: str = "", profile: str | None = None) -> StageContext:
    """A stage's context for the run config ``tree`` (YAML-shaped), with local storage."""
    cfg = config_from(tree or {}, profile=profile)
    return StageContext(run=cfg, dst=dst, store=StorageSource(cfg.storage))


def with_labels(vocabulary: list[str], templates: list[str] | None = None) -> StageContext:
    labels: dict[str, Any] = {"vocabulary": vocabulary}
    if templates is not None:
        labels["templates"] = templates
    return context({"labels": labels})


def with_engine(**engine: Any) -> StageContext:
    return context({"engine": engine})
