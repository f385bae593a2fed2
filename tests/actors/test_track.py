"""Tracking: ids stay put across chunk boundaries and re-seeds, new objects get new ids, state
stays one chunk long; the track stage turns a video row into frame rows with track ids and a
tracks/ table that agrees with them (tiny SAM 2 + tiny SAM on CPU: the real code path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from samflow.models.video.tracker import VideoTracker, match_by_iou
from samflow.schemas import masks as mask_column
from samflow.schemas.rows import build_tables
from tests.helpers.track_oracle import ColourPropagator, colour_seeds, scene
from tests.helpers.tracks import assert_tracks_agree, concat, pending_batch

RED, GREEN, BLUE = (200, 0, 0), (0, 200, 0), (0, 0, 200)


def _run(frames: list[np.ndarray], seed_at: set[int], chunk: int, tracker: VideoTracker) -> list[list[dict]]:
    """Feed frames in chunks, seeding the given frame numbers (as the track stage does)."""
    out = []
    for start in range(0, len(frames), chunk):
        part = frames[start : start + chunk]
        seeds = {i - start: colour_seeds(frames[i]) for i in range(start, start + len(part)) if i in seed_at}
        out.extend(tracker.track(part, seeds))
    return out


def _ids_by_colour(frames: list[np.ndarray], per_frame: list[list[dict]]) -> list[dict[tuple, int]]:
    from samflow.schemas import rle

    result = []
    for frame, records in zip(frames, per_frame):
        found = {}
        for record in records:
            mask = rle.decode(record["segmentation"])
            found[tuple(int(v) for v in frame[mask][0])] = record["track_id"]
        result.append(found)
    return result


def test_ids_persist_across_chunks_and_reseeds_and_a_newcomer_gets_a_new_id() -> None:
    moving = {RED: (0, 5, 3), BLUE: (50, 30, -2)}
    frames = [scene(t, moving | ({GREEN: (20, 20, 1)} if t >= 7 else {})) for t in range(16)]
    propagator = ColourPropagator()
    per_frame = _run(frames, seed_at={0, 5, 7, 12}, chunk=4, tracker=VideoTracker(propagator))
    ids = _ids_by_colour(frames, per_frame)
    first = ids[0]
    assert set(first) == {RED, BLUE} and sorted(first.values()) == [1, 2]
    assert all(found[RED] == first[RED] and found[BLUE] == first[BLUE] for found in ids)  # chunk edges 4, 8, 12; seeds 5, 12
    assert [GREEN in found for found in ids] == [t >= 7 for t in range(16)]
    assert {found[GREEN] for found in ids[7:]} == {3}
    assert max(propagator.session_lengths) <= 4 + 1  # one chunk plus the carried frame


def test_seed_frame_records_keep_the_segment_record_and_propagated_ones_say_track() -> None:
    frames = [scene(t, {RED: (0, 5, 3)}) for t in range(6)]
    per_frame = _run(frames, seed_at={0}, chunk=3, tracker=VideoTracker(ColourPropagator()))
    assert per_frame[0][0]["source"] == "grid" and per_frame[0][0]["predicted_iou"] == 0.9
    for records in per_frame[1:]:
        (record,) = records
        assert record["source"] == "track" and record["track_id"] == 1
        assert record["bbox"][2:] == [10.0, 10.0] and record["area"] == 100  # COCO's box of a 10 x 10 square
        assert record["predicted_iou"] > 0.99


def test_an_object_that_leaves_ends_its_track_and_max_objects_bounds_new_ones() -> None:
    frames = [scene(t, {RED: (40, 5, 8), BLUE: (0, 30, 0)}) for t in range(6)]  # red leaves at t=3
    per_frame = _run(frames, seed_at={0}, chunk=2, tracker=VideoTracker(ColourPropagator()))
    ids = _ids_by_colour(frames, per_frame)
    assert [RED in found for found in ids] == [True, True, True, False, False, False]
    assert len({found[BLUE] for found in ids}) == 1
    capped = _run(frames, seed_at={0}, chunk=2, tracker=VideoTracker(ColourPropagator(), max_objects=1))
    assert {r["track_id"] for records in capped for r in records} == {1}  # one track, never a second


def test_match_by_iou_is_one_to_one_best_first() -> None:
    a = np.zeros((3, 4, 4), bool)
    a[0, :2], a[1, 2:], a[2, :3] = True, True, True
    b = np.zeros((2, 4, 4), bool)
    b[0, :2], b[1, 3:] = True, True
    assert match_by_iou(a, b, 0.5) == {0: 0, 1: 1}  # seed 2 overlaps track 0 less than seed 0 does
    assert match_by_iou(a, b, 0.9) == {0: 0}
    assert match_by_iou(a[:0], b, 0.5) == {}


# --- the stage, on tiny models ------------------------------------------------------------------


av = pytest.importorskip("av")


def _stage(chunk_frames: int, reseed_s: float):
    from samflow.actors.track import TrackStage
    from tests.helpers.stages import context

    run = context({"input": {"video": {"mode": "every_n", "every_n": 1, "chunk_frames": chunk_frames}},
                   "stages": {"track": {"reseed_s": reseed_s, "match_iou": 0.5, "max_objects": 4}}}, profile="tiny")
    return TrackStage(run.run.stages.track, run)




def test_stage_turns_each_video_into_chunks_of_tracked_frames(tmp_path: Path) -> None:
    from PIL import Image

    from tests.helpers.videos import make_video

    video, cut = tmp_path / "clip.mkv", tmp_path / "cut.webm"
    video.write_bytes(make_video("matroska", "mpeg4", n_frames=10))
    whole = make_video("webm", "libvpx-vp9", n_frames=25)
    cut.write_bytes(whole[: len(whole) // 2])
    still = tmp_path / "still.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(still)
    chunks = list(_stage(chunk_frames=4, reseed_s=0.5)(pending_batch([video, cut], still)))

    assert list(chunks[0]["uri"]) == [str(still)]  # images first, untouched, no tracks
    assert mask_column.counts(chunks[0]["masks"]).tolist() == [0] and chunks[0]["tracks"].to_pylist() == [[]]
    sizes = [len(c["uri"]) for c in chunks[1:]]
    assert max(sizes) <= 4
    assert all(list(c) == list(chunks[0]) for c in chunks)  # one column order: Ray concatenates blocks
    rows = {name: concat([c[name] for c in chunks]) for name in chunks[0]}
    assert set(rows) >= {"_meta_track", "tracks", "masks", "pixels"}
    clip = [i for i, u in enumerate(rows["uri"]) if u == str(video)]
    assert [int(rows["frame_index"][i]) for i in clip] == list(range(10))
    assert all(rows["error_type"][i] == "" and len(rows["pixels"][i]) == 48 * 64 * 3 for i in clip)
    cut_rows = [i for i, u in enumerate(rows["uri"]) if u == str(cut)]
    assert [str(rows["error_type"][i]) for i in cut_rows][-1] == "truncated"
    assert len(cut_rows) > 1  # its good frames, then the error row

    tables = build_tables(rows, run_id="r1")
    annotations, tracks, images = tables["annotations"], tables["tracks"], tables["images"]
    assert images.num_rows == len(rows["uri"]) - 1  # every frame and the still; not the error row
    clip_items = {item for item, uri in zip(images["item_id"].to_pylist(), images["uri"].to_pylist()) if uri == str(video)}
    clip_ann = annotations.filter(pc.is_in(annotations["item_id"], pa_array(clip_items)))
    assert clip_ann.num_rows > 0 and None not in clip_ann["track_id"].to_pylist()
    assert_tracks_agree(tracks.filter(pc.equal(tracks["uri"], str(video))), clip_ann, images)




def pa_array(values):
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())




def _banner_tailed_video(path: Path) -> Path:
    """Six good frames, then a 2x6000 tail (a new picture size mid-stream): SAM's resize of the
    banner has no rows, so the video's last chunk fails in the tracker, as a real input can."""
    from tests.helpers.videos import make_video

    path.write_bytes(make_video("mpegts", "libx264", n_frames=6)
                     + make_video("mpegts", "libx264", n_frames=3, width=6000, height=2))
    return path


def test_a_video_whose_last_chunk_fails_keeps_its_tracks(tmp_path: Path) -> None:
    from PIL import Image

    video = _banner_tailed_video(tmp_path / "banner.ts")
    still = tmp_path / "still.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(still)
    chunks = list(_stage(chunk_frames=4, reseed_s=0.5)(pending_batch([video], still)))[1:]
    rows = {name: concat([c[name] for c in chunks]) for name in chunks[0]}
    assert [str(e) for e in rows["error_type"]] == [""] * 6 + ["runtime_error"] * 3
    assert set(rows["error_stage"][6:]) == {"track"}

    tables = build_tables(rows, run_id="r1")
    annotations, tracks, images = tables["annotations"], tables["tracks"], tables["images"]
    assert images.num_rows == 6 and tables["errors"].num_rows == 3
    assert annotations.num_rows > 0 and annotations["track_id"].null_count == 0
    assert tracks.num_rows > 0  # carried by the failed chunk's last row, not lost with it
    assert_tracks_agree(tracks, annotations, images)


def test_a_later_stage_failing_a_videos_last_row_keeps_its_tracks(tmp_path: Path) -> None:
    from PIL import Image

    from samflow.actors.batch import mark_error
    from tests.helpers.videos import make_video

    video = tmp_path / "clip.mkv"
    video.write_bytes(make_video("matroska", "mpeg4", n_frames=6))
    still = tmp_path / "still.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(still)
    chunks = list(_stage(chunk_frames=4, reseed_s=0.5)(pending_batch([video], still)))[1:]
    rows = {name: concat([c[name] for c in chunks]) for name in chunks[0]}
    tracked = build_tables(rows, run_id="r1")["tracks"]
    mark_error(rows, len(rows["uri"]) - 1, "embed", RuntimeError("out of memory"))  # as a later stage does

    tables = build_tables(rows, run_id="r1")
    assert tables["errors"]["stage"].to_pylist() == ["embed"]
    assert tables["tracks"].to_pylist() == tracked.to_pylist() and tracked.num_rows > 0
    assert set(tables["annotations"]["track_id"].to_pylist()) <= set(tracked["track_id"].to_pylist())


def test_a_picture_size_change_mid_stream_restarts_tracking_without_errors(tmp_path: Path) -> None:
    from PIL import Image

    from tests.helpers.videos import make_video

    # MPEG-TS concatenates byte-wise: 6 frames at 64x48, then 6 at 48x32 (a new SPS mid-stream)
    video = tmp_path / "resized.ts"
    video.write_bytes(make_video("mpegts", "libx264", n_frames=6) + make_video("mpegts", "libx264", n_frames=6, width=48, height=32))
    still = tmp_path / "still.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(still)
    chunks = list(_stage(chunk_frames=4, reseed_s=100.0)(pending_batch([video], still)))[1:]
    rows = {name: concat([c[name] for c in chunks]) for name in chunks[0]}
    assert list(rows["error_type"]) == [""] * 12
    sizes = list(zip(rows["height"].tolist(), rows["width"].tolist()))
    assert sizes == [(48, 64)] * 6 + [(32, 48)] * 6
    for r, records in enumerate(rows["masks"].to_pylist()):
        assert all(rec["segmentation"]["size"] == [sizes[r][0], sizes[r][1]] for rec in records)


def test_a_video_that_came_inline_is_tracked_from_its_bytes(tmp_path: Path) -> None:
    """A tar member (or a Parquet cell) has no URI storage can open again: the pending row carries
    the encoded video, and no frame row carries those bytes on."""
    from samflow.config import InputConfig, StorageConfig
    from samflow.media.decode import DecodeStage
    from samflow.store.storage import StorageSource
    from tests.helpers.videos import make_video

    video = make_video("mp4", "libx264", n_frames=6)
    uri = str(tmp_path / "shard-000.tar") + "#clips/000.mp4"  # nothing at this path
    decode = DecodeStage(StorageSource(StorageConfig()), InputConfig(), defer_videos=True)
    batch = decode({"uri": np.array([uri], dtype=object), "size": np.array([len(video)]),
                    "data": np.array([video], dtype=object)})
    assert batch["video_pending"].tolist() == [True] and bytes(batch["pixels"][0]) == video
    batch["masks"] = mask_column.empty(1)
    chunks = list(_stage(chunk_frames=4, reseed_s=0.5)(batch))
    rows = {name: concat([c[name] for c in chunks]) for name in chunks[0]}
    assert list(rows["error_type"]) == [""] * 6, list(rows["error_message"])
    assert [int(i) for i in rows["frame_index"]] == list(range(6))
    assert all(len(p) == int(h) * int(w) * 3 for p, h, w in zip(rows["pixels"], rows["height"], rows["width"]))
