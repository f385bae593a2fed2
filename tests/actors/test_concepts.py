"""The concepts stage (SAM 3) on batches: labelled concept rows, the segment stage's grid covering
only what concept masks did not, CLIP verification in the embed stage, config and graph order."""

from __future__ import annotations

import numpy as np
import pytest

from samflow.actors.batch import object_column
from samflow.actors.concepts import ConceptsConfig, ConceptsStage, read_exemplars
from samflow.actors.embed import EmbedConfig, EmbedStage
from samflow.actors.segment import SegmentConfig, SegmentStage
from samflow.config import config_from
from samflow.models.amg.grid import point_grid
from samflow.models.sam3.runner import ConceptInstances
from samflow.pipeline.graph import model_stages
from samflow.schemas import masks as mask_column
from samflow.schemas import rle, tables
from samflow.schemas.rows import build_tables
from tests.helpers.scene_model import SceneOracle, color_labels, make_scene
from tests.helpers.stages import context, with_engine, with_labels

OBJECTS = [(5, 5, 30, 25), (40, 8, 70, 40), (10, 42, 35, 70), (50, 50, 85, 75), (72, 2, 95, 20)]
H, W = 80, 100
# the fake SAM 3 "knows" two concepts: prompt -> [(object index, score)]
KNOWN = {"box": [(0, 0.9), (1, 0.7), (4, 0.2)], "slab": [(2, 0.8)]}
VOCABULARY = ["box", "slab", "unicorn"]


class SceneConcepts:
    """SAM 3's runner interface over a flat-colour scene: each prompt's instances are the known
    objects, masks exact, scores fixed; honours score_thresh, max_instances and output_sizes."""

    checkpoint_sha256 = "scene"

    def __init__(self) -> None:
        self.calls: list[tuple[int, tuple[str, ...]]] = []

    def segment(self, images, prompts, *, score_thresh, mask_thresh, max_instances, nms_iou, output_sizes=None):
        self.calls.append((len(images), tuple(prompts)))
        out = []
        for image, size in zip(images, output_sizes or [im.shape[:2] for im in images]):
            step = image.shape[0] // size[0]  # upscaled pixels: masks at the original size
            labels = color_labels(image)[::step, ::step]
            masks = [labels == labels[y0, x0] for x0, y0, _, _ in OBJECTS]
            out.append([self._instances(masks, KNOWN.get(p, []), score_thresh, max_instances) for p in prompts])
        return out

    @staticmethod
    def _instances(masks, known, score_thresh, max_instances) -> ConceptInstances:
        chosen = [(k, s) for k, s in known if s > score_thresh][:max_instances]
        boxes = []
        for k, _ in chosen:
            ys, xs = np.nonzero(masks[k])
            boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        return ConceptInstances(
            scores=np.array([s for _, s in chosen], np.float32),
            boxes=np.array(boxes, np.float32).reshape(-1, 4),
            segmentations=[rle.encode(masks[k]) for k, _ in chosen],
            mask_boxes=np.array(boxes, np.int64).reshape(-1, 4),
            areas=np.array([int(masks[k].sum()) for k, _ in chosen], np.int64),
        )


def _batch(images: list[np.ndarray], failed: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    n = len(images)
    return {
        "uri": object_column([f"mem://{i}.png" for i in range(n)]),
        "item_id": object_column([f"item{i}" for i in range(n)]),
        "frame_index": np.zeros(n, dtype=np.int32),
        "timestamp_s": np.full(n, np.nan),
        "width": np.array([im.shape[1] for im in images], dtype=np.int32),
        "height": np.array([im.shape[0] for im in images], dtype=np.int32),
        "pixels": object_column([im.tobytes() for im in images]),
        "error_stage": object_column(["decode" if i in failed else "" for i in range(n)]),
        "error_type": object_column(["corrupt" if i in failed else "" for i in range(n)]),
        "error_message": object_column(["boom" if i in failed else "" for i in range(n)]),
    }


def mask_records_at(batch, row: int) -> list[dict]:
    """Row ``row``'s masks as record dicts ([] before any stage emitted masks)."""
    column = batch.get(mask_column.COLUMN)
    return [] if column is None else mask_column.records_at(column, row)


def _truth(image: np.ndarray) -> list[np.ndarray]:
    labels = color_labels(image)
    return [labels == labels[y0, x0] for x0, y0, _, _ in OBJECTS]


def test_concept_rows_then_grid_covers_only_the_rest():
    image = make_scene(H, W, OBJECTS)
    truth = _truth(image)
    batch = _batch([image, image], failed=(1,))
    concepts = ConceptsStage(ConceptsConfig(model="fake://sam3", score_thresh=0.5), with_labels(VOCABULARY), runner=SceneConcepts())
    batch = concepts(batch)
    records = mask_records_at(batch, 0)
    assert mask_records_at(batch, 1) == []  # a failed row is skipped
    # instances of known concepts above the threshold, best first; object 4 (0.2) is below it
    assert [(r["label"], r["label_score"]) for r in records] == [
        ("box", pytest.approx(0.9)), ("slab", pytest.approx(0.8)), ("box", pytest.approx(0.7))]
    assert {r["source"] for r in records} == {"concept"}
    for r, obj in zip(records, (0, 2, 1)):
        np.testing.assert_array_equal(rle.decode(r["segmentation"]), truth[obj])
        assert r["area"] == truth[obj].sum()

    oracle = SceneOracle()
    oracle.checkpoint_sha256 = None
    segment = SegmentStage(SegmentConfig(model="scene://sam"), with_engine(points_per_side=10, points_per_batch=16), runner=oracle)
    out = mask_records_at(segment(batch), 0)
    assert out[: len(records)] == records  # concept rows kept, first
    grid = out[len(records):]
    assert {r["source"] for r in grid} == {"grid"}
    covered = truth[0] | truth[1] | truth[2]
    grid_masks = [rle.decode(r["segmentation"]) for r in grid]
    # the grid found exactly the two objects no concept instance covered (3, and 4 whose score
    # was under the threshold), each once
    assert not any((m & covered).any() for m in grid_masks)
    assert sorted(int(m.sum()) for m in grid_masks) == sorted(int(truth[k].sum()) for k in (3, 4))
    assert all(any(np.array_equal(m, truth[k]) for k in (3, 4)) for m in grid_masks)
    for r in grid:
        (x, y), = r["point_coords"]
        assert not covered[int(y), int(x)]
    grid_xy = point_grid(10) * np.array([W, H])
    uncovered = sum(not covered[int(y), int(x)] for x, y in grid_xy)
    assert sum(b * n for b, n in oracle.decode_calls) == uncovered < len(grid_xy)


def test_upscaled_pixels_concepts_in_original_coordinates_grid_in_upscaled():
    image = make_scene(H, W, OBJECTS)
    truth = _truth(image)
    batch = _batch([image])
    batch["pixels"] = object_column([image.repeat(2, axis=0).repeat(2, axis=1).tobytes()])
    batch["upscale_factor"] = np.array([2.0])
    batch = ConceptsStage(ConceptsConfig(model="fake://sam3", score_thresh=0.5), with_labels(VOCABULARY), runner=SceneConcepts())(batch)
    concepts = mask_records_at(batch, 0)
    for r, obj in zip(concepts, (0, 2, 1)):
        np.testing.assert_array_equal(rle.decode(r["segmentation"]), truth[obj])
    oracle = SceneOracle()
    oracle.checkpoint_sha256 = None
    out = mask_records_at(SegmentStage(SegmentConfig(model="scene://sam"), with_engine(points_per_side=10), runner=oracle)(batch), 0)
    covered = truth[0] | truth[1] | truth[2]
    grid = [rle.decode(r["segmentation"]) for r in out[len(concepts):]]
    assert grid and all(m.shape == (H, W) and not (m & covered).any() for m in grid)


def test_tiny_sam3_stage_rows_carry_label_score_and_source():
    image = make_scene(H, W, OBJECTS)
    batch = _batch([image, image[:40], image], failed=(2,))
    stage = ConceptsStage(ConceptsConfig(model="tiny://sam3", score_thresh=0.0, max_instances=3), with_labels(["cat", "dog"]), device="cpu")
    out = stage(batch)
    for row, (h, w) in ((0, (H, W)), (1, (40, W))):
        records = mask_records_at(out, row)
        assert 0 < len(records) <= 6 and {r["label"] for r in records} <= {"cat", "dog"}
        assert all(r["source"] == "concept" and 0.0 <= r["label_score"] <= 1.0 for r in records)
        assert [r["label_score"] for r in records] == sorted((r["label_score"] for r in records), reverse=True)
        assert all(r["segmentation"]["size"] == [h, w] for r in records)
    assert mask_records_at(out, 2) == []
    meta = out["_meta_concepts"][0].as_py()
    assert meta["model"] == "tiny://sam3" and meta["checkpoint_sha256"]
    none = ConceptsStage(ConceptsConfig(model="tiny://sam3", score_thresh=0.99), with_labels(["cat"]), device="cpu")(_batch([image]))
    assert mask_records_at(none, 0) == []
    table = build_tables(out, "r1")["annotations"]
    assert set(table.column("source").to_pylist()) == {"concept"}
    assert table.column("label_score").null_count == 0


def test_embed_verifies_concept_masks_and_labels_the_rest():
    image = make_scene(H, W, OBJECTS)
    batch = ConceptsStage(ConceptsConfig(model="fake://sam3", score_thresh=0.5), with_labels(VOCABULARY), runner=SceneConcepts())(_batch([image]))
    oracle = SceneOracle()
    oracle.checkpoint_sha256 = None
    batch = SegmentStage(SegmentConfig(model="scene://sam"), with_engine(points_per_side=10), runner=oracle)(batch)
    embed = EmbedStage(EmbedConfig(model="tiny://clip"), with_labels(VOCABULARY, templates=["{}"]), device="cpu")
    records = mask_records_at(embed(batch), 0)
    concepts = [r for r in records if r["source"] == "concept"]
    grid = [r for r in records if r["source"] == "grid"]
    assert [r["label"] for r in concepts] == ["box", "slab", "box"]  # SAM 3's labels stay
    assert [r["label_score"] for r in concepts] == pytest.approx([0.9, 0.8, 0.7])
    crops = [image[int(r["bbox"][1]): int(r["bbox"][1] + r["bbox"][3]),
                   int(r["bbox"][0]): int(r["bbox"][0] + r["bbox"][2])] for r in concepts]
    probs = embed.clip.label_probabilities(embed.clip.embed_images(crops), VOCABULARY, ["{}"])
    for r, p in zip(concepts, probs):
        own = VOCABULARY.index(r["label"])
        assert r["verified"] == (int(p.argmax()) == own)
        assert r["verify_score"] == pytest.approx(float(p[own]), abs=1e-5)
    assert grid and all(r["verified"] is None and r["label"] in VOCABULARY for r in grid)
    table = build_tables(embed(batch), "r1")["annotations"]
    assert table.schema.field("verified").type == tables.ANNOTATIONS.field("verified").type
    assert table.column("verified").null_count == len(grid)


def test_config_and_graph_order():
    with pytest.raises(ValueError, match="labels.vocabulary"):
        config_from({"stages": {"concepts": {"enabled": True}}})
    cfg = config_from({"stages": {"concepts": {"enabled": True, "score_thresh": 0.3}, "propose": {"enabled": True}},
                      "labels": {"vocabulary": ["cat"]}}, profile="tiny")
    stages = model_stages(cfg)
    names = [s.name for s in stages]
    assert names.index("propose") + 1 == names.index("concepts") == names.index("segment") - 1
    concepts = stages[names.index("concepts")]
    assert concepts.cls is ConceptsStage and concepts.config is cfg.stages.concepts
    assert concepts.config.model == "tiny://sam3" and concepts.config.score_thresh == 0.3
    assert "concepts" not in [s.name for s in model_stages(config_from({}))]


def test_exemplars_from_config_reach_the_stage(tmp_path):
    from PIL import Image

    image = make_scene(H, W, OBJECTS)
    Image.fromarray(image).save(tmp_path / "ref.png")
    tree = {"labels": {"vocabulary": ["box", "slab"],
                       "exemplars": {"box": [{"image": str(tmp_path / "ref.png"), "boxes": [[5, 5, 30, 25]]}]}},
            "stages": {"concepts": {"enabled": True}}}
    with_exemplars = context(tree, profile="tiny")
    loaded = read_exemplars(with_exemplars)
    np.testing.assert_array_equal(loaded["box"][0][0], image)
    np.testing.assert_array_equal(loaded["box"][0][1], [[5, 5, 30, 25]])
    config = ConceptsConfig(model="tiny://sam3", score_thresh=0.0, max_instances=2)
    plain = mask_records_at(ConceptsStage(config, with_labels(["box", "slab"]), device="cpu")(_batch([image])), 0)
    prompted = mask_records_at(ConceptsStage(config, with_exemplars, device="cpu")(_batch([image])), 0)
    scores = lambda recs, label: [r["label_score"] for r in recs if r["label"] == label]  # noqa: E731
    assert scores(plain, "slab") == pytest.approx(scores(prompted, "slab"))
    assert scores(plain, "box") != pytest.approx(scores(prompted, "box"))

    with pytest.raises(ValueError, match="not in labels.vocabulary"):
        config_from({"labels": {"vocabulary": ["slab"], "exemplars": tree["labels"]["exemplars"]}})
    tree["labels"]["exemplars"]["box"][0]["image"] = str(tmp_path / "no.png")
    with pytest.raises(ValueError, match="box.*no.png"):
        read_exemplars(context(tree))
