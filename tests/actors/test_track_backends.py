"""The SAM 3 tracker backend (``Sam3TrackerVideoModel``, chosen by the model URI's family) and
vocabulary-labelled tracks (the concepts stage's SAM 3 masks seed them): on tiny models, CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from samflow.models.loading.registry import ModelLoadError, load_model
from samflow.models.video.tracker import Seed, VideoTracker
from samflow.schemas import rle
from tests.helpers.track_oracle import ColourPropagator, colour_seeds, scene

RED, GREEN, BLUE = (200, 0, 0), (0, 200, 0), (0, 0, 200)
VOCABULARY = ["red square", "blue square"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """As in a Ray actor with num_cpus=1. Tiny models cost per op, and on a busy 2-core machine
    two OpenMP threads waiting on each other made these tests 30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_video_model(uri: str, **kwargs):
    return load_model("auto", uri, task="track", **kwargs)


@pytest.fixture(scope="module")
def sam3_tracker():
    return load_video_model("tiny://sam3", device="cpu")


class SessionLengths:
    """Passes every call to the real model; notes how many frames each session holds."""

    def __init__(self, model) -> None:
        self.model, self.lengths = model, []

    def start_session(self, frames):
        self.lengths.append(len(frames))
        return self.model.start_session(frames)

    def add_masks(self, *args):
        return self.model.add_masks(*args)

    def propagate(self, *args, **kwargs):
        return self.model.propagate(*args, **kwargs)


# --- the backend ------------------------------------------------------------------------------


def test_the_uri_family_picks_the_backend(tmp_path: Path, sam3_tracker) -> None:
    assert type(sam3_tracker.model).__name__ == "Sam3TrackerVideoModel" and sam3_tracker.family == "sam3"
    assert type(load_video_model("tiny://sam2", device="cpu").model).__name__ == "Sam2VideoModel"
    with pytest.raises(ModelLoadError, match="the track stage takes sam2 / sam3 models"):
        load_video_model("tiny://clip", device="cpu")
    # a checkpoint directory: the family comes from its config.json (model_type sam3_tracker_video)
    sam3_tracker.model.save_pretrained(tmp_path)
    loaded = load_video_model(str(tmp_path), device="cpu")
    assert type(loaded).__name__ == "Sam3TrackerVideoRunner" and loaded.checkpoint_sha256
    frames = [scene(t, {RED: (0, 5, 3)}) for t in range(3)]
    masks = np.stack([s.mask for s in colour_seeds(frames[0])])
    outputs = []
    for model in (sam3_tracker, loaded):
        session = model.start_session(frames)
        model.add_masks(session, 0, [7], masks)
        outputs.append([logits for _, _, logits in model.propagate(session, start_frame=0)])
    assert all(np.allclose(a.numpy(), b.numpy(), atol=1e-5) for a, b in zip(*outputs))


def test_a_sam3_video_checkpoint_serves_the_tracker(tmp_path: Path) -> None:
    """facebook/sam3's layout: one ``sam3_video`` checkpoint, detector and tracker, the tracker
    sharing the detector's ViT. The tracker loads from it with the detector's backbone weights."""
    import torch
    from transformers import Sam3Config, Sam3VideoConfig, Sam3VideoModel

    from samflow.models.sam3.tiny import tiny_sam3_config, tiny_sam3_tracker_video_config

    detector = tiny_sam3_config().to_dict()
    width = 128  # the tracker's neck is the detector's FPN: one width (the tracker needs 128)
    detector["vision_config"]["fpn_hidden_size"] = detector["text_config"]["projection_dim"] = width
    for part in ("geometry_encoder_config", "detr_encoder_config", "detr_decoder_config", "mask_decoder_config"):
        detector[part]["hidden_size"] = width
    tracker = tiny_sam3_tracker_video_config()
    tracker.image_size = 56
    tracker.vision_config.backbone_config = Sam3Config(**detector).vision_config.backbone_config
    whole = Sam3VideoModel(Sam3VideoConfig(detector_config=detector, tracker_config=tracker.to_dict()))
    whole.save_pretrained(tmp_path)
    video = load_video_model(str(tmp_path), device="cpu")
    assert type(video.model).__name__ == "Sam3TrackerVideoModel" and video.image_size == 56
    key = "vision_encoder.backbone.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(video.model.state_dict()[key], whole.state_dict()[f"detector_model.{key}"])
    frames = [scene(t, {RED: (0, 5, 3)}) for t in range(3)]
    session = video.start_session(frames)
    video.add_masks(session, 0, [1], np.stack([s.mask for s in colour_seeds(frames[0])]))
    assert [idx for idx, _, _ in video.propagate(session, start_frame=0)] == [0, 1, 2]


def _track(tracker: VideoTracker, frames: list[np.ndarray], seeds: dict[int, list[Seed]], chunk: int):
    out = []
    for start in range(0, len(frames), chunk):
        part = frames[start : start + chunk]
        out.extend(tracker.track(part, {i - start: s for i, s in seeds.items() if start <= i < start + chunk}))
    return out


def _ids(per_frame: list[list[dict]]) -> list[set[int]]:
    return [{r["track_id"] for r in records} for records in per_frame]


def test_sam3_tracker_keeps_ids_across_chunks_and_reseeds_and_a_newcomer_gets_a_new_id(sam3_tracker) -> None:
    moving = {RED: (0, 5, 3), BLUE: (50, 30, -2)}
    frames = [scene(t, moving | ({GREEN: (25, 20, 1)} if t >= 6 else {})) for t in range(12)]
    first = colour_seeds(frames[0])[:2]  # blue and red, not green
    # Run 1: a seed frame at 6 with no seeds: its records are the tracked objects carried onto it.
    model = SessionLengths(sam3_tracker)
    plain = _track(VideoTracker(model), frames, {0: first, 6: []}, chunk=4)
    ids = _ids(plain)
    assert ids[0] == {1, 2}
    assert all(found == {1, 2} for found in ids)  # chunk edges 4 and 8, re-seed at 6: no id changes
    assert max(model.lengths) <= 4 + 1  # one chunk plus the carried frame: state stays bounded
    # Run 2, the same video: the re-seed at 6 finds those objects again (as the segment engine
    # would) and the green newcomer; the known objects keep their ids, the newcomer gets id 3.
    again = [Seed(rle.decode(r["segmentation"]), {**r, "source": "grid", "track_id": None}) for r in plain[6]]
    green = next(s for s in colour_seeds(frames[6]) if tuple(int(v) for v in frames[6][s.mask][0]) == GREEN)
    reseeded = _track(VideoTracker(sam3_tracker), frames, {0: first, 6: [*again, green]}, chunk=4)
    before = {r["track_id"]: rle.decode(r["segmentation"]) for r in plain[6]}
    after = {r["track_id"]: rle.decode(r["segmentation"]) for r in reseeded[6]}
    assert set(after) == {1, 2, 3}
    assert all(np.array_equal(after[i], before[i]) for i in (1, 2))  # (random weights: the two may look alike)
    assert np.array_equal(after[3], green.mask)
    assert _ids(reseeded)[:6] == ids[:6] and all(found <= {1, 2, 3} and 3 in found for found in _ids(reseeded)[6:])


# --- labelled tracks (the tracker's rules, on a colour oracle with known answers) ----------------


def _labelled(frame: np.ndarray, colour: tuple, label: str | None, score: float | None) -> Seed:
    seed = next(s for s in colour_seeds(frame) if tuple(int(v) for v in frame[s.mask][0]) == colour)
    record = dict(seed.record, source="concept" if label else "grid", label=label, label_score=score)
    return Seed(seed.mask, record)


def test_a_track_keeps_its_label_and_labels_match_only_their_own_tracks() -> None:
    frames = [scene(t, {RED: (0, 5, 3), BLUE: (50, 30, -2)}) for t in range(9)]
    seeds = {
        0: [_labelled(frames[0], RED, "red square", 0.8), _labelled(frames[0], BLUE, None, None)],
        # re-seed: red found again (new score); a grid mask on red; blue named by a concept; and
        # another concept on red's very mask, which must not take over red's track
        4: [_labelled(frames[4], RED, "red square", 0.6), _labelled(frames[4], BLUE, "blue square", 0.7),
            _labelled(frames[4], RED, "blue square", 0.5)],
        7: [_labelled(frames[7], BLUE, None, None)],
    }
    per_frame = _track(VideoTracker(ColourPropagator()), frames, seeds, chunk=3)
    by_id: dict[int, list[tuple]] = {}
    for t, records in enumerate(per_frame):
        for r in records:
            by_id.setdefault(r["track_id"], []).append((t, r["label"], r["label_score"], r["source"]))
    red, blue, other = by_id.pop(1), by_id.pop(2), by_id.pop(3)
    assert not by_id
    assert [t for t, *_ in red] == list(range(9)) and [t for t, *_ in blue] == list(range(9))
    assert [label for _, label, _, _ in red] == ["red square"] * 9
    assert [score for _, _, score, _ in red] == pytest.approx([0.8] * 4 + [0.6] * 5)  # each seed's own score on
    assert [label for _, label, _, _ in blue] == [None] * 4 + ["blue square"] * 5  # named at the re-seed
    assert [score for _, _, score, _ in blue[4:]] == pytest.approx([0.7] * 5)
    assert blue[7][3] == "grid"  # an unlabelled seed refreshes the mask and keeps the track's label
    # the second concept on red's mask is a track of its own (as the concepts stage keeps it)
    assert [t for t, *_ in other] == list(range(4, 9))
    assert [label for _, label, _, _ in other] == ["blue square"] * 5
    assert [score for _, _, score, _ in other] == pytest.approx([0.5] * 5)


# --- the stage: concept-seeded tracks on tiny SAM 3 ---------------------------------------------


av = pytest.importorskip("av")


def _labelled_stage(model: str, chunk_frames: int, reseed_s: float):
    from samflow.actors.track import TrackStage
    from tests.helpers.stages import context

    run = context({"input": {"video": {"mode": "every_n", "every_n": 1, "chunk_frames": chunk_frames}},
                   "stages": {"track": {"reseed_s": reseed_s, "match_iou": 0.5, "max_objects": 8},
                              "concepts": {"enabled": True, "score_thresh": 0.0, "max_instances": 1}},
                   "labels": {"vocabulary": VOCABULARY}}, profile="tiny")
    return TrackStage(run.run.stages.track.model_copy(update={"model": model}), run, device="cpu")


def test_concept_seeded_tracks_carry_the_vocabulary_labels_and_the_table_agrees(tmp_path: Path) -> None:
    import pyarrow.compute as pc
    from PIL import Image

    from samflow.schemas.rows import build_tables
    from tests.helpers.tracks import assert_tracks_agree, concat, pending_batch
    from tests.helpers.videos import make_video

    video = tmp_path / "clip.mp4"
    video.write_bytes(make_video("mp4", "libx264", n_frames=8))
    still = tmp_path / "still.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(still)
    stage = _labelled_stage("tiny://sam3", chunk_frames=3, reseed_s=0.5)  # 10 fps: seeds at frames 0 and 5
    chunks = list(stage(pending_batch([video], still)))[1:]
    rows = {name: concat([c[name] for c in chunks]) for name in chunks[0]}
    assert stage.info["family"] == "sam3"
    tables = build_tables(rows, run_id="r1")
    annotations, tracks, images = tables["annotations"], tables["tracks"], tables["images"]
    assert_tracks_agree(tracks, annotations, images)

    labels = dict(zip(tracks["track_id"].to_pylist(), tracks["label"].to_pylist()))
    assert set(VOCABULARY) <= set(labels.values())  # each concept seeded a track
    frame_of = dict(zip(images["item_id"].to_pylist(), images["frame_index"].to_pylist()))
    concept_rows = annotations.filter(pc.equal(annotations["source"], "concept")).to_pylist()
    assert {frame_of[r["item_id"]] for r in concept_rows} == {0, 5}  # SAM 3 runs on seed frames only
    for row in annotations.to_pylist():
        if labels[row["track_id"]] is None:
            assert row["label"] is None
        else:  # every row of a labelled track says its label, with SAM 3's score
            assert row["label"] == labels[row["track_id"]] and row["label_score"] is not None
    for track in tracks.to_pylist():
        mine = [r for r in annotations.to_pylist() if r["track_id"] == track["track_id"]]
        if track["label"] is not None:  # a labelled track's score: its rows' mean label score
            assert track["score"] == pytest.approx(np.mean([r["label_score"] for r in mine]), rel=1e-5)


def test_the_pipeline_gives_the_track_stage_the_concepts_stage_when_it_is_on() -> None:
    from samflow.actors.stage import StageContext
    from samflow.actors.track import TrackStage
    from samflow.config import config_from
    from samflow.pipeline.graph import model_stages

    def loaded_track_stage(overrides: dict) -> TrackStage:
        cfg = config_from(overrides, profile="tiny")
        stage = next(s for s in model_stages(cfg) if s.name == "track")
        track = stage.cls(stage.config, StageContext(run=cfg, store=object()), device="cpu")
        track._load()  # as the first video would
        return track

    assert loaded_track_stage({}).concepts is None
    on = loaded_track_stage({"stages": {"concepts": {"enabled": True, "score_thresh": 0.3}},
                             "labels": {"vocabulary": VOCABULARY}}).concepts
    assert on.vocabulary == VOCABULARY and on.info["model"] == "tiny://sam3"
    assert on.options["score_thresh"] == 0.3


def test_embed_keeps_the_label_of_a_concept_track_and_labels_the_rest() -> None:
    from samflow.actors.embed import EmbedConfig, EmbedStage
    from samflow.schemas import masks as mask_column
    from tests.helpers.stage_batches import image_batch
    from tests.helpers.stages import context

    frame = scene(0, {RED: (0, 5, 3), BLUE: (50, 30, -2)})
    red, blue = (_labelled(frame, c, None, None) for c in (RED, BLUE))
    records = [dict(red.record, source="track", label="blue square", label_score=0.4, track_id=1),  # SAM 3 said so
               dict(blue.record, source="track", label=None, label_score=None, track_id=2)]
    batch = image_batch([frame])
    batch["masks"] = mask_column.from_records([records])
    out = EmbedStage(EmbedConfig(model="tiny://clip"), context({"labels": {"vocabulary": VOCABULARY, "templates": ["{}"]}}), device="cpu")(batch)
    named, unnamed = mask_column.records_at(out["masks"], 0)
    assert (named["label"], named["label_score"]) == ("blue square", pytest.approx(0.4))  # kept, and judged
    assert named["verified"] is not None and named["verify_score"] is not None
    assert unnamed["label"] in VOCABULARY and unnamed["verified"] is None  # a zero-shot label


def test_a_track_model_that_cannot_track_is_refused_before_the_run() -> None:
    from samflow.cli.preflight import check_models
    from samflow.config import config_from
    from samflow.errors import UserError

    for ok in ("tiny://sam2", "tiny://sam3", "random://sam3"):
        check_models(config_from({}, profile="tiny", overrides=[f"stages.track.model={ok}"]))
    with pytest.raises(UserError, match=r"stages.track.model: tiny://clip is a .clip. model; the track stage takes sam2 / sam3 models"):
        check_models(config_from({}, profile="tiny", overrides=["stages.track.model=tiny://clip"]))
