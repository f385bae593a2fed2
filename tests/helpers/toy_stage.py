"""A stage added the way a new one is: its module (config section + class) and one table line.

``ToyStage`` marks every healthy image with one mask over its top-left ``corner`` x ``corner``
pixels, labelled ``label``: what a test can check in the run's tables and manifest.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from samflow.actors.batch import Batch, arrow_batches, healthy, stage_meta
from samflow.actors.mask_records import append_records, mask_record
from samflow.actors.stage import StageConfig, StageContext
from samflow.actors.table import StageEntry

STAGE = "toy"


class ToyConfig(StageConfig):
    """A toy stage: off unless asked for."""

    enabled: bool = Field(False, description="Off by default.")
    model: str = Field("tiny://sam", description="Checked by the preflight like any stage's model; never loaded.")
    corner: int = Field(2, ge=1, description="Side of the marked square, in pixels.")
    label: str = Field("corner", description="Label of the mask.")


class ToyStage:
    def __init__(self, config: ToyConfig, context: StageContext | None = None, device: str | None = None) -> None:
        self.config = config
        self.info = {"model": config.model, "checkpoint_sha256": None}

    @arrow_batches
    def __call__(self, batch: Batch) -> Batch:
        with stage_meta(batch, STAGE, self.info):
            records = {}
            for row in healthy(batch).tolist():
                mask = np.zeros((int(batch["height"][row]), int(batch["width"][row])), dtype=bool)
                mask[: self.config.corner, : self.config.corner] = True
                records[row] = [mask_record(mask, source="semantic", label=self.config.label)]
            append_records(batch, records)
        return batch


ENTRY = StageEntry("toy", "toy", ToyConfig, f"{__name__}:ToyStage", task="segment")
