"""The stage table: every model stage of the graph, in graph order, one line each.

A line names the stage, its config section (``stages.<section>``) and its class. The pipeline
builds the graph from this table alone, and ``samflow.config`` builds ``stages`` from it, so a
new stage is its module plus one line here. Stage classes are imported by the pipeline only
(their model libraries load there); config classes are light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from samflow.actors.concepts import ConceptsConfig
from samflow.actors.embed import EmbedConfig
from samflow.actors.embed_features import runs_dinov2
from samflow.actors.propose import ProposeConfig
from samflow.actors.segment import SegmentConfig
from samflow.actors.semantic import SemanticConfig
from samflow.actors.stage import StageConfig
from samflow.actors.track import TrackConfig
from samflow.actors.upscale import UpscaleConfig

if TYPE_CHECKING:
    from samflow.config import RunConfig


@dataclass(frozen=True)
class StageEntry:
    """``name``: the graph's operator and the metadata key; ``section``: its ``stages.<section>``
    config (two stages may share one: pool settings included); ``stage``: "module:Class";
    ``model_field``: the section's field holding this stage's model URI (its pin is
    ``model_sha256`` only for ``model``); ``when``: overrides the section's ``runs``; ``task``: what
    its model does in the model registry (default: ``name``); ``videos_only``: nothing to do for an
    input that holds no video."""

    name: str
    section: str
    config: type[StageConfig]
    stage: str
    model_field: str = "model"
    when: Callable[[Any], bool] | None = None
    task: str | None = None
    videos_only: bool = False

    @property
    def model_task(self) -> str:
        """What the stage asks of its model, in the model registry's terms (default: its name)."""
        return self.task or self.name

    def runs(self, section: StageConfig, run: RunConfig, videos: bool = True) -> bool:
        if self.videos_only and not videos:
            return False
        return self.when(section) if self.when is not None else section.runs(run)

    def stage_class(self) -> type:
        module, _, name = self.stage.partition(":")
        return getattr(importlib.import_module(module), name)


# Graph order: upscale -> propose -> concepts -> segment -> track -> embed -> semantic (after
# embed, so zero-shot labels never overwrite the class names of semantic rows).
STAGE_TABLE: tuple[StageEntry, ...] = (
    StageEntry("upscale", "upscale", UpscaleConfig, "samflow.actors.upscale:UpscaleStage"),
    StageEntry("propose", "propose", ProposeConfig, "samflow.actors.propose:ProposeStage"),
    StageEntry("concepts", "concepts", ConceptsConfig, "samflow.actors.concepts:ConceptsStage"),
    StageEntry("segment", "segment", SegmentConfig, "samflow.actors.segment:SegmentStage"),
    StageEntry("track", "track", TrackConfig, "samflow.actors.track:TrackStage", videos_only=True),
    StageEntry("embed", "embed", EmbedConfig, "samflow.actors.embed:EmbedStage"),
    StageEntry("embed_dinov2", "embed", EmbedConfig, "samflow.actors.embed_features:FeatureEmbedStage",
               model_field="dinov2_model", when=runs_dinov2, task="features"),
    StageEntry("semantic", "semantic", SemanticConfig, "samflow.actors.semantic:SemanticStage"),
)


def sections() -> dict[str, type[StageConfig]]:
    """``stages.<section>`` -> its config class, each once."""
    return {entry.section: entry.config for entry in STAGE_TABLE}
