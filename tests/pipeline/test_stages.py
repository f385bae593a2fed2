"""Model stages in the Ray Data graph (upscale, propose, segment, embed) with real tiny models on
the session's local Ray cluster: two pipeline runs over local folders, shared by the tests.

Run "full" enables every stage (upscale threshold between the two image sizes, proposals, a
label vocabulary, per-mask vectors, saved upscaled images); run "lean" is the tiny profile as it
is (upscale and propose disabled, no vocabulary).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from samflow.actors.batch import object_column
from samflow.actors.embed import EmbedConfig, EmbedStage, mask_crop
from samflow.actors.propose import ProposeConfig, ProposeStage
from samflow.actors.rescale import downscale_mask, records_to_original
from samflow.actors.stage import StageConfig, StageContext
from samflow.actors.threads import torch_threads
from samflow.actors.upscale import UpscaleConfig, UpscaleStage, upscaled_uri
from samflow.config import RayConfig, RunConfig, load_config
from samflow.models.loading.registry import load_model
from samflow.pipeline.graph import (
    _pool,
    build_dataset,
    cpu_fallback,
    model_stages,
    run_pipeline,
)
from samflow.pipeline.resources import StagePlacement
from samflow.scenes.sample import synthetic_scene
from samflow.schemas import proposals, rle, tables
from samflow.schemas.ids import item_id
from samflow.schemas.proposals import PROPOSAL
from tests.helpers.stages import context

SMALL = (40, 52)  # (h, w): short side under the threshold below -> upscaled
LARGE = (96, 80)  # short side at/over the threshold -> left as it is
MIN_SHORT_SIDE = 64
VOCABULARY = ["cat", "dog", "traffic cone"]


def _write_inputs(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (h, w) in {"small": SMALL, "large": LARGE}.items():
        image, _, _ = synthetic_scene(rng, h, w, n_shapes=3)
        paths[name] = folder / f"{name}.png"
        Image.fromarray(image).save(paths[name])
    paths["broken"] = folder / "broken.png"
    paths["broken"].write_bytes(Image.open(paths["small"]).tobytes()[:300])  # raw bytes: no image
    return paths


def _items(paths: dict[str, Path]) -> list[dict]:
    return [{"uri": str(p), "size": p.stat().st_size} for p in sorted(paths.values())]


FULL = [
    "stages.upscale.enabled=true",
    f"stages.upscale.min_short_side={MIN_SHORT_SIDE}",
    "stages.upscale.save=true",
    "stages.propose.enabled=true",
    "stages.propose.max_boxes=3",
    "stages.propose.score_thresh=0.0",
    f"labels.vocabulary={VOCABULARY}",
    "stages.embed.mask_embeddings=true",
    "output.shard_rows=4",
]


def _read(dst: Path, table: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((dst / table).glob("*.parquet"))])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return _write_inputs(tmp_path_factory.mktemp("stage-inputs"))


@pytest.fixture(scope="module")
def full_run(inputs, tmp_path_factory, ray_cluster):
    dst = tmp_path_factory.mktemp("full-out")
    cfg = load_config(profile="tiny", overrides=FULL)
    stats = run_pipeline(_items(inputs), cfg, str(dst), "run-full")
    return dst, stats


@pytest.fixture(scope="module")
def lean_run(inputs, tmp_path_factory, ray_cluster):
    dst = tmp_path_factory.mktemp("lean-out")
    cfg = load_config(profile="tiny", overrides=["output.shard_rows=4", "stages.track.enabled=false",
                                                 "stages.embed.num_threads=2"])
    stats = run_pipeline(_items(inputs), cfg, str(dst), "run-lean")
    return dst, stats, cfg


def _images_by_name(dst: Path) -> dict[str, dict]:
    return {Path(r["uri"]).stem: r for r in _read(dst, "images").to_pylist()}


def _annotations_of(dst: Path, image: dict) -> list[dict]:
    return [r for r in _read(dst, "annotations").to_pylist() if r["item_id"] == image["item_id"]]


# --- full run -----------------------------------------------------------------------------------


def test_every_input_is_accounted_for_and_the_broken_one_fails_in_decode(full_run):
    dst, stats = full_run
    assert set(_images_by_name(dst)) == {"small", "large"}
    errors = _read(dst, "errors").to_pylist()
    assert [(Path(e["uri"]).stem, e["stage"]) for e in errors] == [("broken", "decode")]
    assert set(stats.models) == {"upscale", "propose", "segment", "track", "embed"}  # track: on for videos
    assert stats.models["propose"]["model"] == "tiny://owlv2"


def test_proposals_become_box_prompted_masks_with_their_score(full_run):
    dst, _ = full_run
    annotations = _read(dst, "annotations")
    dim = _read(dst, "embeddings").schema.field("embedding").type.list_size
    assert annotations.schema.equals(tables.annotations_schema(dim))  # fixed-size vectors
    rows = annotations.to_pylist()
    boxes = [r for r in rows if r["source"] == "box"]
    assert boxes, "propose is on: some masks come from box prompts"
    for image in _images_by_name(dst).values():
        assert 0 < len([r for r in boxes if r["item_id"] == image["item_id"]]) <= 3  # max_boxes
    for row in boxes:
        assert row["proposal_score"] is not None and 0.0 <= row["proposal_score"] <= 1.0
        assert row["point_coords"] == []
    for row in rows:
        if row["source"] == "grid":
            assert row["proposal_score"] is None


def test_every_mask_has_a_vocabulary_label_and_a_probability(full_run):
    dst, _ = full_run
    rows = _read(dst, "annotations").to_pylist()
    assert rows
    for row in rows:
        assert row["label"] in VOCABULARY
        assert 0.0 <= row["label_score"] <= 1.0
    # a softmax over three labels never picks one with less than a third of the mass
    assert min(r["label_score"] for r in rows) >= 1 / len(VOCABULARY) - 1e-6


def test_mask_embeddings_are_unit_vectors_of_the_clip_dim(full_run):
    dst, _ = full_run
    dim = load_model("clip", "tiny://clip").dim
    vectors = np.asarray([r["embedding"] for r in _read(dst, "annotations").to_pylist()], dtype=np.float32)
    assert vectors.shape[1] == dim
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    image_vectors = np.asarray(_read(dst, "embeddings").column("embedding").to_pylist(), dtype=np.float32)
    assert image_vectors.shape == (2, dim)


def test_small_image_is_upscaled_and_reported_in_original_coordinates(full_run):
    dst, _ = full_run
    small = _images_by_name(dst)["small"]
    scale = load_model("realesrgan", "tiny://realesrgan").scale
    assert scale > 1
    assert small["upscale_factor"] == scale
    assert (small["height"], small["width"]) == SMALL
    rows = _annotations_of(dst, small)
    assert rows
    for row in rows:
        mask = rle.decode(row["segmentation"])
        assert list(row["segmentation"]["size"]) == list(SMALL)
        assert int(mask.sum()) == row["area"] > 0
        x, y, w, h = row["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w, y + h) == pytest.approx((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        assert 0 <= x < x + w <= SMALL[1] and 0 <= y < y + h <= SMALL[0]
        cx, cy, cw, ch = row["crop_box"]
        assert 0 <= cx and 0 <= cy and cx + cw <= SMALL[1] and cy + ch <= SMALL[0]
        for px, py in row["point_coords"]:
            assert 0 <= px <= SMALL[1] and 0 <= py <= SMALL[0]


def test_upscaled_image_is_saved_at_the_model_scale_and_only_for_upscaled_items(full_run, inputs):
    dst, _ = full_run
    images = _images_by_name(dst)
    scale = int(images["small"]["upscale_factor"])
    saved = Path(upscaled_uri(str(dst), images["small"]["item_id"]))
    with Image.open(saved) as png:
        assert png.size == (SMALL[1] * scale, SMALL[0] * scale)
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]
    assert images["small"]["item_id"] == item_id(str(inputs["small"]))


def test_large_image_is_not_upscaled(full_run):
    dst, _ = full_run
    large = _images_by_name(dst)["large"]
    assert large["upscale_factor"] == 1.0
    for row in _annotations_of(dst, large):
        assert list(row["segmentation"]["size"]) == list(LARGE)


# --- lean run: disabled stages leave no trace -----------------------------------------------------


def test_actors_compute_on_the_configured_threads_and_the_run_reports_its_phases(lean_run):
    _, stats, cfg = lean_run
    # embed asked for 2 threads; segment for none: its configured num_cpus, whatever Ray reserved
    assert stats.models["embed"]["torch_threads"] == torch_threads(2, cfg.stages.embed.num_cpus)
    assert stats.models["segment"]["torch_threads"] == torch_threads(None, cfg.stages.segment.num_cpus)
    phases = stats.phases()
    assert set(phases) == {"ray_start", "to_first_batch", "streaming"}
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases["streaming"] > 0


def test_disabled_stages_add_no_actors_and_no_outputs(lean_run, inputs):
    dst, stats, cfg = lean_run
    assert [s.name for s in model_stages(cfg)] == ["segment", "embed"]
    plan = repr(build_dataset(_items(inputs), cfg, str(dst), "plan-only"))
    assert "SegmentStage" in plan and "EmbedStage" in plan
    assert "UpscaleStage" not in plan and "ProposeStage" not in plan
    assert set(stats.models) == {"segment", "embed"}
    assert set(stats.stage_busy_s) == {"segment", "embed"}
    assert not (dst / "upscaled").exists()
    images = _images_by_name(dst)
    assert set(images) == {"small", "large"}
    assert all(r["upscale_factor"] == 1.0 for r in images.values())
    rows = _read(dst, "annotations").to_pylist()
    assert rows
    for row in rows:
        assert row["source"] == "grid" and row["proposal_score"] is None
        assert row["label"] is None and row["label_score"] is None and row["embedding"] is None
    assert list(images["small"].keys()) == tables.IMAGES.names


# --- pieces without Ray ---------------------------------------------------------------------------


def test_records_map_back_exactly_from_a_nearest_neighbour_upscale():
    rng = np.random.default_rng(3)
    factor = 4
    original = rng.random((9, 13)) > 0.6
    big = np.kron(original, np.ones((factor, factor), dtype=bool))
    record = {
        "segmentation": rle.encode(big), "bbox": [0.0, 0.0, 1.0, 1.0], "area": int(big.sum()),
        "point_coords": [[8.0, 12.0]], "crop_box": [0.0, 0.0, 52.0, 36.0], "source": "grid",
    }
    (back,) = records_to_original([record], factor)
    assert back["segmentation"] == rle.encode(original)
    assert back["area"] == int(original.sum())
    ys, xs = np.nonzero(original)
    assert back["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    assert back["point_coords"] == [[2.0, 3.0]]
    assert back["crop_box"] == [0.0, 0.0, 13.0, 9.0]


def test_block_majority_and_vanishing_masks():
    thin = np.zeros((8, 8), dtype=bool)
    thin[0, :] = True  # one upscaled row of 4x4 blocks = a quarter of each block: under half
    assert not downscale_mask(thin, 4).any()
    record = {"segmentation": rle.encode(thin), "bbox": [0, 0, 8, 1], "point_coords": [], "crop_box": None}
    assert records_to_original([record], 4) == []
    half = np.zeros((4, 4), dtype=bool)
    half[0:2, 0] = True  # half of the top-left 2x2 block is in: the pixel is in
    assert downscale_mask(half, 2).tolist() == [[True, False], [False, False]]


def test_mask_crop_covers_the_box_in_upscaled_pixels():
    image = np.arange(20 * 24 * 3, dtype=np.uint8).reshape(20, 24, 3)
    crop = mask_crop(image, [1, 2, 4, 2], factor=2)  # columns 1..4, rows 2..3 of a 12x10 original
    np.testing.assert_array_equal(crop, image[4:8, 2:10])


def test_pool_asks_for_the_fitted_resources():
    stage = StageConfig(num_gpus=0.5, concurrency=(1, 3))
    pool = _pool(stage, StagePlacement(num_cpus=0.25, num_gpus=0.5))
    assert (pool["num_gpus"], pool["num_cpus"]) == (0.5, 0.25)
    assert _pool(stage, StagePlacement(num_cpus=1.0, num_gpus=0.0))["num_gpus"] is None
    compute = pool["compute"]
    assert (compute.min_size, compute.max_size) == (1, 3)


def test_cpu_fallback_is_automatic_only_on_a_local_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cpu_fallback(RayConfig()) is True  # local: GPU stages run on CPU
    assert cpu_fallback(RayConfig(address="ray://head:10001")) is False  # joined: GPU nodes may come
    assert cpu_fallback(RayConfig(address="ray://head:10001", cpu_fallback=True)) is True
    assert cpu_fallback(RayConfig(cpu_fallback=False)) is False


def test_a_partly_given_stage_section_keeps_that_stage_defaults():
    cfg = load_config(overrides=["stages.upscale.model=tiny://realesrgan", "stages.segment.num_gpus=0.25"])
    defaults = load_config()
    assert cfg.stages.upscale.enabled is False  # naming a model does not switch a stage on
    assert cfg.stages.segment.batch_size == defaults.stages.segment.batch_size
    assert cfg.stages.segment.model == defaults.stages.segment.model
    assert cfg.stages.segment.num_gpus == 0.25


# --- stages called directly on a batch: the per-row failure contract ------------------------------


def _batch(images: list[np.ndarray | None], failed: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """A decode-shaped batch; ``None`` images are rows whose pixels do not match their size."""
    n = len(images)
    sizes = [(8, 8) if im is None else im.shape[:2] for im in images]
    return {
        "uri": object_column([f"mem://{i}.png" for i in range(n)]),
        "item_id": object_column([f"item{i}" for i in range(n)]),
        "frame_index": np.zeros(n, dtype=np.int32),
        "timestamp_s": np.full(n, np.nan),
        "width": np.array([w for _, w in sizes], dtype=np.int32),
        "height": np.array([h for h, _ in sizes], dtype=np.int32),
        "pixels": object_column([b"bad" if im is None else im.tobytes() for im in images]),
        "error_stage": object_column(["decode" if i in failed else "" for i in range(n)]),
        "error_type": object_column(["corrupt" if i in failed else "" for i in range(n)]),
        "error_message": object_column(["boom" if i in failed else "" for i in range(n)]),
    }


def _scenes(*sizes: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [synthetic_scene(rng, h, w, n_shapes=2)[0] for h, w in sizes]


def test_upscale_fails_only_the_broken_row_and_skips_failed_ones():
    stage = UpscaleStage(UpscaleConfig(model="tiny://realesrgan", min_short_side=32, tile=None))
    small, large = _scenes((20, 24), (40, 36))
    out = stage(_batch([small, None, large, small], failed=(3,)))
    assert out["upscale_factor"].tolist() == [stage.scale, 1.0, 1.0, 1.0]
    assert len(out["pixels"][0]) == small.size * stage.scale**2
    assert out["pixels"][2] == large.tobytes()
    assert list(out["error_stage"]) == ["", "upscale", "", "decode"]
    assert out["_meta_upscale"][0].as_py()["scale"] == stage.scale


def test_open_vocabulary_proposals_lie_inside_the_image_and_failed_rows_get_none():
    stage = ProposeStage(ProposeConfig(model="tiny://owlv2", max_boxes=2, score_thresh=0.0, queries=["a cone", "a ball"]))
    (image,) = _scenes((30, 44))
    out = stage(_batch([image, image], failed=(1,)))
    boxes, scores = proposals.boxes_at(out, 0)
    assert 0 < len(boxes) <= 2 and len(scores) == len(boxes)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 <= x1 <= 44 and 0 <= y0 <= y1 <= 30
    assert [len(found) for found in proposals.boxes_at(out, 1)] == [0, 0]
    assert out["proposals"].type == pa.list_(PROPOSAL)  # Arrow, not JSON text


def test_embed_without_masks_or_vocabulary_writes_image_vectors_only():
    stage = EmbedStage(EmbedConfig(model="tiny://clip", mask_embeddings=True), context({"labels": {"vocabulary": ["cat"]}}))
    images = _scenes((24, 24), (16, 20))
    out = stage(_batch(images, failed=(1,)))
    assert "masks" not in out  # no segment stage ran: nothing to label
    assert np.linalg.norm(out["embedding"][0]) == pytest.approx(1.0, abs=1e-4)
    assert not out["embedding"][1].any()


def test_upscale_writes_each_upscaled_image_and_a_failed_write_fails_its_row():
    saved: dict[str, np.ndarray] = {}

    class Store:  # storage as the stage sees it: a write to item1's file fails
        def read(self, uri: str) -> bytes:
            raise AssertionError("the upscale stage only writes")

        def write(self, uri: str, data: bytes) -> None:
            assert uri.startswith("mem://out/upscaled/") and uri.endswith(".png")
            item = uri.rsplit("/", 1)[1].removesuffix(".png")
            if item == "item1":
                raise OSError("disk full")
            saved[item] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    context = StageContext(run=RunConfig(), dst="mem://out", store=Store())
    stage = UpscaleStage(UpscaleConfig(model="tiny://realesrgan", min_short_side=32, tile=None, save=True), context)
    small, other, large = _scenes((20, 24), (18, 22), (40, 36))
    out = stage(_batch([small, other, large]))
    assert sorted(saved) == ["item0"]  # the large image is not upscaled, so not saved
    assert saved["item0"].tobytes() == out["pixels"][0]
    assert list(out["error_stage"]) == ["", "upscale", ""]
    assert "disk full" in out["error_message"][1]
    assert out["upscale_factor"].tolist() == [stage.scale, 1.0, 1.0]
