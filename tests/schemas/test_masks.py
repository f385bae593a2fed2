"""The mask-record column between stages: built from engine records, appended by several emitters,
annotated per mask, turned into the annotations table, and through Ray's Arrow batches unchanged."""

import numpy as np
import pyarrow as pa
import pytest

from samflow.actors.batch import arrow_batches, dropping_outputs, from_arrow, to_arrow
from samflow.actors.embed import EmbedConfig, EmbedStage
from samflow.schemas import masks as mask_column
from samflow.schemas import rle, tables
from samflow.schemas.ids import annotation_id, item_id
from samflow.schemas.rows import build_tables
from tests.helpers.stages import context


def _record(x: int, source: str = "grid") -> dict:
    mask = np.zeros((6, 8), bool)
    mask[1:4, x : x + 2] = True
    return {
        "segmentation": rle.encode(mask), "bbox": [float(x), 1.0, 1.0, 2.0], "area": int(mask.sum()),
        "predicted_iou": 0.9, "stability_score": 0.95, "point_coords": [[float(x), 2.0]],
        "crop_box": [0.0, 0.0, 8.0, 6.0], "source": source, "proposal_score": None,
        "extra_key_ignored": "yes",
    }


def _batch(per_row: list[list[dict]], failed: tuple[int, ...] = ()) -> dict:
    n = len(per_row)
    uris = [f"s3://b/{i}.png" for i in range(n)]
    column = lambda values: np.array(values, dtype=object)  # noqa: E731
    batch = {
        "uri": column(uris), "item_id": column([item_id(u) for u in uris]),
        "frame_index": np.zeros(n, np.int32), "timestamp_s": np.full(n, np.nan),
        "width": np.full(n, 8, np.int32), "height": np.full(n, 6, np.int32),
        "error_stage": column(["x" if i in failed else "" for i in range(n)]),
        "error_type": column(["boom" if i in failed else "" for i in range(n)]),
        "error_message": column(["m" if i in failed else "" for i in range(n)]),
    }
    mask_column.add(batch, per_row)
    return batch


def test_emitters_append_in_order_and_readers_see_rows():
    batch = _batch([[_record(0), _record(2)], [], [_record(4)]])
    mask_column.add(batch, [[_record(6, "box")], [_record(1, "box")], []])
    column = batch[mask_column.COLUMN]
    assert column.type == mask_column.MASKS
    assert mask_column.counts(column).tolist() == [3, 1, 1]
    assert [m["source"] for m in mask_column.records_at(column, 0)] == ["grid", "grid", "box"]
    boxes = mask_column.boxes_per_row(column)
    assert boxes[0][:, 0].tolist() == [0.0, 2.0, 6.0] and boxes[1][:, 0].tolist() == [1.0]
    assert boxes[0].dtype == np.float32


def test_with_fields_sets_per_mask_labels_and_fixed_size_vectors():
    column = _batch([[_record(0), _record(2)], [_record(4)]])[mask_column.COLUMN]
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = mask_column.with_fields(
        column, label=["a", "b", None], embedding=mask_column.vectors(vectors, np.array([1, 1, 0], bool))
    )
    assert mask_column.field(out, "embedding").type == pa.list_(pa.float32(), 4)
    assert mask_column.field(out, "label").to_pylist() == ["a", "b", None]
    assert mask_column.records_at(out, 1)[0]["embedding"] is None
    with pytest.raises(ValueError, match="2 values for 3 masks"):
        mask_column.with_fields(column, label=["a", "b"])


def test_writer_turns_the_column_into_annotations_of_healthy_rows_only():
    batch = _batch([[_record(0), _record(2)], [_record(4)], [_record(1)]], failed=(1,))
    vectors = np.ones((4, 3), np.float32)
    batch[mask_column.COLUMN] = mask_column.with_fields(batch[mask_column.COLUMN], embedding=vectors)
    batch["embedding"] = np.eye(3, 3, dtype=np.float32)
    out = build_tables(batch, "r1", embed_model="tiny://clip")
    annotations = out["annotations"]
    assert annotations.schema.equals(tables.annotations_schema(3))
    items = batch["item_id"]
    assert annotations.column("annotation_id").to_pylist() == [
        annotation_id(items[0], 0), annotation_id(items[0], 1), annotation_id(items[2], 0)
    ]
    assert annotations.column("item_id").to_pylist() == [items[0], items[0], items[2]]
    row = annotations.to_pylist()[2]
    assert rle.decode(row["segmentation"])[1:4, 1:3].all() and row["area"] == 6
    assert row["embedding"] == [1.0, 1.0, 1.0] and row["label"] is None
    assert [e["uri"] for e in out["errors"].to_pylist()] == ["s3://b/1.png"]


def test_arrow_batches_round_trip_keeps_masks_arrow_and_vectors_fixed_size():
    batch = _batch([[_record(0)], []])
    batch["pixels"] = np.array([b"\x00" * 144, b""], dtype=object)

    @arrow_batches
    def stage(b: dict) -> dict:
        assert isinstance(b[mask_column.COLUMN], pa.Array) and isinstance(b["pixels"][0], bytes)
        b["embedding"] = np.ones((len(b["uri"]), 5), np.float32)
        return b

    table = stage(to_arrow(batch))
    assert isinstance(table, pa.Table)
    assert table.schema.field(mask_column.COLUMN).type == mask_column.MASKS
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 5)
    back = from_arrow(table)
    assert back["embedding"].shape == (2, 5)
    assert mask_column.records_at(back[mask_column.COLUMN], 0)[0]["area"] == 6


def test_the_last_stage_drops_the_pixels_from_its_own_output():
    """dropping_outputs: the stage still sees the pixels; its Arrow output has none (the writer
    never reads them); the same stage unwrapped keeps them, and its class name is kept."""
    batch = _batch([[_record(0)], []])
    batch["pixels"] = np.array([b"\x01" * 144, b""], dtype=object)

    class Stage:
        @arrow_batches
        def __call__(self, b: dict) -> dict:
            assert b["pixels"][0] == b"\x01" * 144
            b["embedding"] = np.ones((len(b["uri"]), 5), np.float32)
            return b

    last = dropping_outputs(Stage, ("pixels",))
    assert last.__name__ == "Stage"
    dropped, kept = last()(to_arrow(batch)), Stage()(to_arrow(batch))
    assert "pixels" not in dropped.column_names and "pixels" in kept.column_names
    assert dropped.column("embedding").equals(kept.column("embedding"))


def test_embed_labels_and_embeds_every_mask_of_healthy_rows_only():

    rng = np.random.default_rng(0)
    batch = _batch([[_record(0), _record(2)], [_record(4)], [_record(1)]], failed=(1,))
    batch["pixels"] = np.array([rng.integers(0, 255, (6, 8, 3), np.uint8).tobytes() for _ in range(3)], dtype=object)
    stage = EmbedStage(EmbedConfig(model="tiny://clip", mask_embeddings=True), context({"labels": {"vocabulary": ["cat", "dog"]}}))
    out = stage(batch)[mask_column.COLUMN]
    assert mask_column.field(out, "embedding").type == pa.list_(pa.float32(), stage.clip.dim)
    for row in (0, 2):
        for mask in mask_column.records_at(out, row):
            assert mask["label"] in {"cat", "dog"} and 0.0 <= mask["label_score"] <= 1.0
            assert np.linalg.norm(mask["embedding"]) == pytest.approx(1.0, abs=1e-4)
    (failed,) = mask_column.records_at(out, 1)
    assert failed["label"] is None and failed["embedding"] is None
