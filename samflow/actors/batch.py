"""The row contract between stages, and the one way a stage turns a failure into an error row.

Model stages run with ``batch_format="pyarrow"`` and decorate ``__call__`` with
:func:`arrow_batches`, which hands them a dict of columns: ``uri, item_id, frame_index,
timestamp_s, width, height`` (the image), ``pixels`` (raw RGB bytes, H*W*3, C order; empty for
error rows), ``error_stage, error_type, error_message`` ("" when the row is healthy),
``video_pending`` (True: the row stands for a whole video, no pixels yet; the track stage expands
it into frame rows) as numpy arrays; nested Arrow columns (``masks``: every mask of the row, see ``samflow.schemas.masks``,
the one module that owns that format) stay ``pyarrow`` arrays and are read and built only through
that module; fixed-size float lists (``embedding``) arrive as 2-D numpy arrays and go back as
fixed-size float32 lists. Stages add one ``_meta_<stage>`` column (an Arrow struct,
``samflow.schemas.tables.STAGE_META``: model uri, checkpoint hash, busy seconds of the batch).
No JSON text carries stage outputs.

When the upscale stage runs it adds ``upscale_factor`` (a whole number, 1 for images it left
alone) and replaces ``pixels`` with the upscaled image, (H*f)*(W*f)*3 bytes, while ``width`` and
``height`` stay the original image's: stages read pixels through :func:`image_at`, and every
output (masks, boxes) is reported in the original image's coordinates.
"""

from __future__ import annotations

import functools
import os
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa

from samflow.schemas.tables import STAGE_META, STAGE_META_PREFIX

# Column -> numpy array, or pyarrow array for nested Arrow-native columns (``masks``).
Batch = dict[str, Any]


def _stays_arrow(kind: pa.DataType) -> bool:
    """Nested columns stay Arrow in a stage's batch (no Python object per element)."""
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_struct(kind)


def _is_vector(kind: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(kind) and pa.types.is_floating(kind.value_type)


def from_arrow(table: pa.Table) -> Batch:
    """A Ray Data pyarrow batch -> the stage's dict of columns (see the module docstring)."""
    from ray.data.block import BlockAccessor

    batch: Batch = {}
    plain = []
    for name, column in zip(table.column_names, table.columns):
        kind = column.type
        if _stays_arrow(kind):
            batch[name] = column.combine_chunks()
        elif _is_vector(kind):
            flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            batch[name] = flat.reshape(len(column), kind.list_size)
        else:
            plain.append(name)
    if plain:  # Ray's own numpy conversion: tensor extension columns, binary, strings
        batch.update(BlockAccessor.for_block(table.select(plain)).to_numpy())
    return {name: batch[name] for name in table.column_names}


def to_arrow(batch: Batch) -> pa.Table:
    """The stage's dict of columns -> a pyarrow batch for Ray Data (2-D float arrays become
    fixed-size float32 lists; Arrow arrays pass through)."""
    from ray.data.block import BlockAccessor

    columns = {
        name: _vectors(column) if _is_matrix(column) else column for name, column in batch.items()
    }
    return BlockAccessor.batch_to_block(columns)


def _is_matrix(column: Any) -> bool:
    return isinstance(column, np.ndarray) and column.ndim == 2 and column.dtype.kind == "f"


def _vectors(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def arrow_batches(call: Callable[..., Batch]) -> Callable[..., Any]:
    """Decorate a stage's ``__call__`` (or a batch function): given a ``pyarrow.Table`` (Ray Data
    with ``batch_format="pyarrow"``) it sees a :data:`Batch` and returns a table; given a dict
    (tests, benches) it works on the dict as is. Columns named in the stage's ``drop_outputs``
    (see :func:`dropping_outputs`) leave the table before it is built."""

    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        *head, batch = args
        if not isinstance(batch, pa.Table):
            return call(*args, **kwargs)
        out = call(*head, from_arrow(batch), **kwargs)
        for name in getattr(head[0], "drop_outputs", ()) if head else ():
            out.pop(name, None)
        return to_arrow(out)

    wrapper.arrow_batches = True  # type: ignore[attr-defined]
    return wrapper


def dropping_outputs(stage_cls: type, columns: tuple[str, ...]) -> type:
    """``stage_cls`` whose Arrow output leaves out ``columns``: the last model stage drops the
    pixels itself, so a batch's decoded images (about 1 MB each) are neither converted back to
    Arrow nor stored for the writer, which never reads them. The class name is kept."""
    return type(stage_cls.__name__, (stage_cls,), {"drop_outputs": columns, "__qualname__": stage_cls.__qualname__})


def healthy(batch: Batch) -> np.ndarray:
    """Indices of the rows no earlier stage has failed, and that hold pixels (a
    ``video_pending`` row is a whole video the track stage decodes later)."""
    ok = np.asarray(batch["error_type"]) == ""
    pending = batch.get("video_pending")
    if pending is not None:
        ok &= ~np.asarray(pending, dtype=bool)
    return np.flatnonzero(ok)


def upscale_factor_at(batch: Batch, row: int) -> int:
    """How many times larger the row's pixels are than the original image (1 without upscale)."""
    factors = batch.get("upscale_factor")
    return 1 if factors is None else int(round(float(factors[row])))


def image_at(batch: Batch, row: int) -> np.ndarray:
    """The row's RGB image as an (H, W, 3) uint8 view of its pixel bytes (the upscaled image
    when the upscale stage enlarged it)."""
    factor = upscale_factor_at(batch, row)
    h, w = int(batch["height"][row]) * factor, int(batch["width"][row]) * factor
    return np.frombuffer(batch["pixels"][row], dtype=np.uint8).reshape(h, w, 3)


def mark_error(batch: Batch, row: int, stage: str, exc: BaseException) -> None:
    """Record why ``row`` failed in ``stage``; later stages skip it and the writer files it."""
    for column in ("error_stage", "error_type", "error_message"):
        batch[column] = np.array(batch[column], dtype=object)  # batches may be read-only views
    batch["error_stage"][row] = stage
    batch["error_type"][row] = getattr(exc, "error_type", None) or _snake(type(exc).__name__)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    batch["error_message"][row] = message[:2000]


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out or "error"


def object_column(values: list[Any]) -> np.ndarray:
    """A 1-D object array (np.asarray would try to broadcast lists of lists)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def current_node_id() -> str:
    """The Ray node this process runs on ("" outside Ray): where a stage's batch was placed."""
    import ray

    if not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id() or ""


@contextmanager
def stage_meta(batch: Batch, stage: str, info: dict[str, Any]) -> Iterator[None]:
    """Time the stage's work on this batch and attach ``_meta_<stage>`` to every row: ``info``
    plus the batch id, busy seconds, start time (epoch seconds), row count, and the Ray node id and worker process it ran on
    (placement, and which actor incarnation did the work)."""
    start = time.perf_counter()
    started_at = time.time()  # wall clock: the driver compares it with its own (same node or NTP)
    yield
    # The batch id tells apart two batches of one stage that land in the same output shard (and
    # lets the driver count a batch split over two shards once).
    meta = dict(
        info,
        batch=uuid.uuid4().hex,
        busy_s=time.perf_counter() - start,
        started_at=started_at,
        rows=len(batch["uri"]),
        node=current_node_id(),
        pid=os.getpid(),
    )
    unknown = set(meta) - set(STAGE_META.names)
    if unknown:
        raise ValueError(f"stage {stage!r} records {sorted(unknown)}, which STAGE_META does not hold")
    batch[f"{STAGE_META_PREFIX}{stage}"] = pa.array([meta] * len(batch["uri"]), type=STAGE_META)


def describe(exc: BaseException) -> str:
    """One line for logs: the exception and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_split_retry(
    rows: list[int], infer: Any, *, on_error: Any
) -> dict[int, Any]:
    """Run ``infer(rows) -> list[result]``; when a batch fails (CUDA OOM, one poisoned input),
    split it in halves and retry, down to single rows. A single row that still fails goes to
    ``on_error(row, exc)`` and gets no result. One bad row never costs the others theirs."""
    results: dict[int, Any] = {}
    pending = [rows] if rows else []
    while pending:
        chunk = pending.pop()
        try:
            for row, result in zip(chunk, infer(chunk), strict=True):
                results[row] = result
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            _release_accelerator_memory()
            if len(chunk) == 1:
                on_error(chunk[0], exc)
            else:
                half = len(chunk) // 2
                pending.extend([chunk[half:], chunk[:half]])
    return results


def infer_or_fail(batch: Batch, stage: str, rows: list[int], infer: Any) -> dict[int, Any]:
    """:func:`run_split_retry` over ``rows``; a row that fails even alone becomes ``stage``'s
    error row in ``batch``. Every model stage maps its healthy rows through this."""
    return run_split_retry(rows, infer, on_error=lambda row, exc: mark_error(batch, row, stage, exc))


def _release_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
