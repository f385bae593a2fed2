"""Round records under ``DST/_rounds/<round_id>.json``, and the current model they name."""

from __future__ import annotations

from typing import Any

from samflow.config import StorageConfig
from samflow.store.catalog import ROUNDS, Catalog
from samflow.store.runs import json_records

# The held-out figure that decides a round, and the ones the record keeps.
DECIDING_METRIC = "miou"
KEPT_METRICS = ("miou", "recall_50", "recall_75", "mask_ap", "mask_ap50", "images", "gt_masks")


def rounds(dst: str, storage: StorageConfig) -> list[dict[str, Any]]:
    """Every round recorded under DST, oldest first."""
    return json_records(dst, ROUNDS, storage, order_by="started_at")


def current_model(dst: str, storage: StorageConfig, default: str) -> str:
    """The model the newest round kept, else ``default`` (the config's segment model)."""
    found = rounds(dst, storage)
    return found[-1]["current_model"] if found else default


def figures(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {key: evaluation[key] for key in KEPT_METRICS if key in evaluation}


def keeps_new_model(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """A new model replaces the current one only when it scores strictly higher on the held-out split."""
    return float(after[DECIDING_METRIC]) > float(before[DECIDING_METRIC])


def write_round(dst: str, storage: StorageConfig, record: dict[str, Any]) -> str:
    catalog = Catalog(dst, storage)
    path = catalog.path(ROUNDS, f"{record['round_id']}.json")
    catalog.write_json(path, record)
    return path


def round_rows(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per round for ``samflow runs DST``."""
    rows = []
    for record in found:
        before, after = record.get("holdout_before", {}), record.get("holdout_after", {})
        rows.append({
            "round_id": record.get("round_id", ""),
            "started": str(record.get("started_at", ""))[:19].replace("T", " "),
            "model_before": (record.get("model_before") or {}).get("uri") or "",
            "miou_before": _rounded(before.get(DECIDING_METRIC)),
            "miou_after": _rounded(after.get(DECIDING_METRIC)),
            "replaced": record.get("replaced"),
            "current_model": record.get("current_model", ""),
        })
    return rows


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)
