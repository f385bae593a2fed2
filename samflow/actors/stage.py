"""What every model stage shares: its config section's pool settings and the run context it gets.

A stage is a class in its own module under ``samflow/actors/``: it declares its config section
(a :class:`StageConfig` subclass) and takes it whole, with a :class:`StageContext`, in ``__init__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from samflow.config import RunConfig


class Section(BaseModel):
    """A config section: unknown keys are mistakes, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class StageConfig(Section):
    """One model stage: its model and the actor pool that hosts it."""

    enabled: bool = Field(True, description="Run this stage; a disabled stage adds no columns and no actors.")
    model: str = Field(
        "", description="Model URI: Hub id, hf://, local path, s3:// or https:// (fetched once per node "
        "into $SAMFLOW_MODEL_CACHE; '#sha256=<hex>' at the end pins its hash) or tiny://<family>."
    )
    model_sha256: str | None = Field(
        None, description="Expected sha256 of the model file or folder (local, s3:// or https://): "
        "`samflow models check`'s model_sha256, which for a folder covers every file in it; a model "
        "that differs is refused before the run starts.",
    )
    batch_size: int = Field(4, ge=1, description="Rows (images) per model call.")
    num_gpus: float = Field(
        0.0, ge=0,
        description="GPUs per actor; fractional allowed (0.5 = two actors share a GPU); 0 = CPU "
        "(Ray hides the GPUs from the actor). Without any GPU see ray.cpu_fallback.",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per actor.")
    num_threads: int | None = Field(
        None, ge=1, description="torch threads per actor; default: num_cpus as configured, rounded "
        "up, at most the node's CPUs (Ray would give one thread per reserved CPU, and a small cluster's "
        "fit may shrink the reservation to a fraction).",
    )
    concurrency: tuple[int, int] = Field(
        (1, 1), description="Actor pool size min..max; Ray Data autoscales within it."
    )

    def runs(self, run: RunConfig) -> bool:
        """Whether the stage is part of this run's graph (a stage may depend on another's)."""
        return self.enabled


class ByteStore(Protocol):
    """Storage as a stage sees it: bytes by URI, with the run's storage settings."""

    def read(self, uri: str) -> bytes: ...

    def write(self, uri: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class StageContext:
    """What a stage may read besides its own section: the whole run config (labels, engine,
    input limits, other stages' models), the output URI, and storage."""

    run: RunConfig
    dst: str = ""
    store: ByteStore | None = None

    @classmethod
    def default(cls) -> StageContext:
        from samflow.config import RunConfig

        return cls(run=RunConfig())

    def require_store(self, why: str) -> ByteStore:
        if self.store is None:
            raise ValueError(f"{why} needs storage: build the stage with a StageContext that has one")
        return self.store


def context_or_default(context: StageContext | None) -> StageContext:
    return context if context is not None else StageContext.default()


def model_info(uri: str, runner: Any) -> dict[str, Any]:
    """What a stage records about its model in every batch's metadata (and the run manifest)."""
    return {"model": uri, "checkpoint_sha256": getattr(runner, "checkpoint_sha256", None)}
