"""The one mask-record format between stages: an Arrow ``masks`` column, ``list<struct>`` per row.

A pipeline batch (see ``samflow.actors.batch``) carries every mask of a row in ``batch["masks"]``,
a ``pyarrow.ListArray`` of :data:`MASK` structs (one list per row, empty for rows without masks or
that failed). The struct's fields are the ``annotations`` table's columns with the same Arrow
types (``segmentation`` is COCO RLE ``{size: [h, w], counts: str}``), so the writer turns the column
into that table without touching Python objects, and no stage parses or re-serialises JSON.

Stages never build the column by hand. They call:

- :func:`add` (emitters: segment, concepts, maskrcnn, semantic, track): append one list of SA-1B
  record dicts per row (the engine's output; keys not in :data:`MASK` are ignored, missing keys are
  null). Masks a row already has (from an earlier emitter) stay first, in order.
- :func:`boxes_per_row` / :func:`records_at` / :func:`field` (readers): bboxes as numpy, one row's
  records as dicts, or one field of every mask as an Arrow array.
- :func:`with_fields` (annotators, e.g. embed): set or replace per-mask fields (``label``,
  ``label_score``, ``embedding`` as a fixed-size float32 list) for every mask at once.
- :func:`flat` / :func:`row_of_mask` (the writer): all masks as one ``StructArray`` and the row of each.

A mask's index within its row is its ``annotation_id`` index (``schemas.ids.annotation_id``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from samflow.schemas.tables import BBOX_TYPE, RLE_TYPE

COLUMN = "masks"
# ``source`` of the concepts stage's masks (SAM 3): later stages keep them first and build on them.
CONCEPT_SOURCE = "concept"

MASK = pa.struct(
    [
        ("segmentation", RLE_TYPE),
        ("bbox", BBOX_TYPE),  # [x, y, w, h], pycocotools' toBbox of the RLE, original image coordinates
        ("area", pa.int64()),
        ("predicted_iou", pa.float32()),
        ("stability_score", pa.float32()),
        ("point_coords", pa.list_(pa.list_(pa.float32(), 2))),
        ("crop_box", BBOX_TYPE),
        ("source", pa.string()),  # grid | box | concept | maskrcnn | semantic | ground_truth
        ("proposal_score", pa.float32()),
        ("label", pa.string()),
        ("label_score", pa.float32()),
        ("verified", pa.bool_()),  # concept masks: CLIP's verdict on SAM 3's label (embed)
        ("verify_score", pa.float32()),
        ("track_id", pa.int64()),
        ("source_id", pa.string()),  # ground truth: the annotation's id in the input
    ]
)
MASKS = pa.list_(MASK)


def embedding_type(dim: int) -> pa.DataType:
    """A per-mask (or per-image) unit vector of the run's embed model."""
    return pa.list_(pa.float32(), dim)


def from_records(per_row: Sequence[Sequence[Mapping[str, Any]]]) -> pa.ListArray:
    """One list of mask records per row -> a ``masks`` column (Arrow converts in C++)."""
    return pa.array([list(records) for records in per_row], type=MASKS)


def empty(rows: int) -> pa.ListArray:
    """A ``masks`` column with no masks in any of ``rows`` rows."""
    return from_records([[]] * rows)


def add(batch: dict[str, Any], per_row: Sequence[Sequence[Mapping[str, Any]]]) -> None:
    """Append ``per_row[r]`` (SA-1B record dicts) to row r's masks in ``batch``, in place."""
    new = from_records(per_row)
    old = batch.get(COLUMN)
    batch[COLUMN] = new if old is None else _concat_rows(_as_list_array(old), new)


def _as_list_array(column: Any) -> pa.ListArray:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    return column


def _concat_rows(first: pa.ListArray, second: pa.ListArray) -> pa.ListArray:
    """Row r of the result = row r of ``first`` followed by row r of ``second``."""
    if len(first) != len(second):
        raise ValueError(f"masks column has {len(first)} rows, new masks {len(second)}")
    if first.type != second.type:
        second = _conform(second, first.type)
    a, b = counts(first), counts(second)
    values = pa.concat_arrays([first.flatten(), second.flatten()])
    a_start, b_start = _starts(a), _starts(b) + int(a.sum())
    take = np.concatenate(
        [np.r_[np.arange(s, s + n), np.arange(t, t + m)] for s, n, t, m in zip(a_start, a, b_start, b)]
        or [np.zeros(0, np.int64)]
    ).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(a + b)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(take)))


def _conform(column: pa.ListArray, target: pa.ListType) -> pa.ListArray:
    """``column`` with ``target``'s struct fields (missing ones null), e.g. to add plain masks to a
    column an annotator already extended."""
    values = column.flatten()
    children = [
        values.field(f.name) if values.type.get_field_index(f.name) >= 0 else pa.nulls(len(values), f.type)
        for f in target.value_type
    ]
    struct = pa.StructArray.from_arrays(children, fields=list(target.value_type))
    return pa.ListArray.from_arrays(pa.array(offsets_of(column)), struct)


def counts(column: pa.ListArray) -> np.ndarray:
    """Masks per row."""
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def _starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths


def offsets_of(column: pa.ListArray) -> np.ndarray:
    """(rows + 1,) int32: row r's masks are ``flat(column)[offsets[r]:offsets[r + 1]]``."""
    return np.concatenate([[0], np.cumsum(counts(column))]).astype(np.int32)


def flat(column: pa.ListArray) -> pa.StructArray:
    """Every mask of every row, row by row, as one struct array."""
    return _as_list_array(column).flatten()


def row_of_mask(column: pa.ListArray) -> np.ndarray:
    """(masks,) the row each mask of :func:`flat` belongs to."""
    n = counts(column)
    return np.repeat(np.arange(len(n)), n)


def field(column: pa.ListArray, name: str) -> pa.Array:
    """One field of every mask (row by row), e.g. ``field(col, "source")``."""
    return flat(column).field(name)


def boxes_per_row(column: pa.ListArray) -> list[np.ndarray]:
    """Row r -> its masks' [x, y, w, h] boxes as a (k, 4) float32 array."""
    boxes = field(column, "bbox").flatten().to_numpy(zero_copy_only=False).reshape(-1, 4)
    offsets = offsets_of(column)
    return [boxes[offsets[r] : offsets[r + 1]] for r in range(len(offsets) - 1)]


def records_at(column: pa.ListArray, row: int) -> list[dict[str, Any]]:
    """Row ``row``'s masks as record dicts (for stages that need Python objects, e.g. a tracker)."""
    return column[row].as_py() or []


def with_fields(column: pa.ListArray, **per_mask: Any) -> pa.ListArray:
    """The column with per-mask fields set or replaced; each value holds one entry per mask of
    :func:`flat` order: a pyarrow array, or a 2-D float numpy array (a fixed-size float32 list per
    mask, e.g. ``embedding``), or a 1-D numpy array / list."""
    column = _as_list_array(column)
    values = column.flatten()
    children = {f.name: values.field(f.name) for f in values.type}
    for name, data in per_mask.items():
        array = _to_arrow(data, children[name].type if name in children else None)
        if len(array) != len(values):
            raise ValueError(f"{name}: {len(array)} values for {len(values)} masks")
        children[name] = array
    struct = pa.StructArray.from_arrays(list(children.values()), names=list(children))
    return pa.ListArray.from_arrays(pa.array(offsets_of(column)), struct)


def _to_arrow(data: Any, existing: pa.DataType | None) -> pa.Array:
    if isinstance(data, (pa.Array, pa.ChunkedArray)):
        array = data.combine_chunks() if isinstance(data, pa.ChunkedArray) else data
        return array if existing is None else array.cast(existing)
    if isinstance(data, np.ndarray) and data.ndim == 2:
        return vectors(data)
    return pa.array(list(data) if not isinstance(data, np.ndarray) else data, type=existing)


def vectors(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """(n, dim) floats -> fixed-size float32 lists; rows where ``valid`` is False are null."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    values = pa.array(matrix.reshape(-1), type=pa.float32())
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1], mask=mask)
