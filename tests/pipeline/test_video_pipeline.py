"""Videos through the whole run (local Ray, Prefect, tiny models): frames stream out of the
track stage with track ids, the tracks/ table agrees with the annotation rows, images are
untouched, a cut-short video keeps its frames plus one error row, a video whose last chunk fails
keeps its tracks, and the MOT and YouTube-VIS exports (run as a user types them) hold the frames their JSON and seqinfo name, which TrackEval
and a VIS loader read back."""

from __future__ import annotations

import configparser
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from samflow.config import StorageConfig, load_config
from samflow.flows.annotate import annotate_dataset
from samflow.store.catalog import Catalog
from tests.helpers.cli_process import samflow
from tests.helpers.tracks import assert_tracks_agree

av = pytest.importorskip("av")
pytestmark = pytest.mark.slow  # a whole annotate run on Ray: about a minute

from tests.helpers.videos import make_video  # noqa: E402


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, ray_cluster, prefect_server):
    src = tmp_path_factory.mktemp("videos_src")
    (src / "walk.mkv").write_bytes(make_video("matroska", "mpeg4", rate=10, n_frames=12))
    (src / "pan.mp4").write_bytes(make_video("mp4", "libx264", rate=10, n_frames=8))
    whole = make_video("webm", "libvpx-vp9", rate=10, n_frames=25)
    (src / "cut.webm").write_bytes(whole[: len(whole) // 2])
    # six good frames, then a 2x6000 tail that fails the tracker: its last chunk is error rows
    (src / "banner.ts").write_bytes(make_video("mpegts", "libx264", rate=10, n_frames=6)
                                    + make_video("mpegts", "libx264", rate=10, n_frames=3, width=6000, height=2))
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(src / "still.png")
    dst = str(tmp_path_factory.mktemp("videos_out") / "out")
    cfg = load_config(profile="tiny", overrides=[
        "input.video.mode=every_n", "input.video.every_n=1", "input.video.chunk_frames=4",
        "stages.track.reseed_s=0.5", "output.shard_rows=5",
    ])
    manifest = annotate_dataset(str(src), dst, config=cfg.model_dump(mode="json"))
    return src, dst, manifest


def _tables(dst: str) -> dict:
    catalog = Catalog(dst, StorageConfig())
    return {name: catalog.read_table(name) for name in ("images", "annotations", "tracks", "errors")}


def test_every_sampled_frame_is_an_image_row_and_the_still_is_untouched(video_run) -> None:
    src, dst, _ = video_run
    t = _tables(dst)
    frames = {}
    for uri, index in zip(t["images"]["uri"].to_pylist(), t["images"]["frame_index"].to_pylist()):
        frames.setdefault(Path(uri).name, []).append(index)
    assert sorted(frames["walk.mkv"]) == list(range(12))
    assert sorted(frames["pan.mp4"]) == list(range(8))
    assert frames["still.png"] == [0]
    assert sorted(frames["banner.ts"]) == list(range(6))
    assert 0 < len(frames["cut.webm"]) < 25
    errors = sorted((Path(r["uri"]).name, r["stage"], r["error_type"]) for r in t["errors"].to_pylist())
    assert errors == [("banner.ts", "track", "runtime_error")] * 3 + [("cut.webm", "decode", "truncated")]


def test_video_masks_carry_track_ids_that_the_tracks_table_summarises(video_run) -> None:
    _, dst, _ = video_run
    t = _tables(dst)
    images, annotations, tracks = t["images"], t["annotations"], t["tracks"]
    still = images.filter(pc.match_substring(images["uri"], "still.png"))["item_id"].to_pylist()
    for name in ("walk.mkv", "pan.mp4", "cut.webm", "banner.ts"):  # banner.ts: its last chunk failed
        items = images.filter(pc.match_substring(images["uri"], name))["item_id"]
        ann = annotations.filter(pc.is_in(annotations["item_id"], items))
        assert ann.num_rows > 0 and ann["track_id"].null_count == 0
        assert_tracks_agree(tracks.filter(pc.match_substring(tracks["uri"], name)), ann, images)
    still_ann = annotations.filter(pc.is_in(annotations["item_id"], pa.array(still)))
    assert still_ann.num_rows > 0 and still_ann["track_id"].null_count == still_ann.num_rows


def _source_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video as PyAV decodes it (the runs here sample every frame)."""
    frames = []
    with av.open(str(path)) as container:
        try:
            frames += [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except av.error.FFmpegError:
            pass  # the cut video: the frames before the cut
    return frames


def _assert_is_frame(path: Path, source: np.ndarray) -> None:
    """An exported JPEG opens, has the frame's size and (up to JPEG's error) its pixels."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == source.shape, path
    assert np.abs(pixels.astype(float) - source).mean() < 3.0, path


def _trackeval(gt_folder: Path, tracker_folder: Path, seqmap: Path) -> dict:
    import trackeval

    evaluator = trackeval.Evaluator({"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                                     "PRINT_ONLY_COMBINED": True, "OUTPUT_SUMMARY": False,
                                     "OUTPUT_DETAILED": False, "PLOT_CURVES": False, "TIME_PROGRESS": False})
    dataset = trackeval.datasets.MotChallenge2DBox({
        "GT_FOLDER": str(gt_folder), "TRACKERS_FOLDER": str(tracker_folder), "SKIP_SPLIT_FOL": True,
        "SEQMAP_FILE": str(seqmap), "PRINT_CONFIG": False})
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False})]
    results, messages = evaluator.evaluate([dataset], metrics)
    assert messages["MotChallenge2DBox"]["samflow"] == "Success"
    return results["MotChallenge2DBox"]["samflow"]


def test_mot_export_is_a_motchallenge_set_trackeval_reads(video_run, tmp_path) -> None:
    src, dst, _ = video_run
    summary = json.loads(samflow("export", "mot", dst, "mot", cwd=tmp_path).stdout)
    out = tmp_path / "mot"  # a relative OUT, as typed
    index = json.loads((out / "videos.json").read_text())
    assert sorted(Path(v["uri"]).name for v in index.values()) == ["banner.ts", "cut.webm", "pan.mp4", "walk.mkv"]
    t = _tables(dst)
    position = {}  # item -> its place among its video's frames: the image number in img1/, from 0
    for video in index.values():
        rows = sorted((r["frame_index"], r["item_id"]) for r in t["images"].to_pylist() if r["uri"] == video["uri"])
        position.update({item: k for k, (_, item) in enumerate(rows)})
    uri_of = dict(zip(t["images"]["item_id"].to_pylist(), t["images"]["uri"].to_pylist()))
    boxes = 0
    for name, video in index.items():
        info = configparser.ConfigParser()
        info.read(out / name / "seqinfo.ini")
        sequence = info["Sequence"]
        assert sequence["name"] == name and sequence["imDir"] == "img1" and sequence["imExt"] == ".jpg"
        assert int(sequence["seqLength"]) == len(video["frames"]) and int(sequence["frameRate"]) == 10
        source = _source_frames(src / Path(video["uri"]).name)
        images = sorted((out / name / "img1").iterdir())
        assert [p.name for p in images] == [f"{k:06d}.jpg" for k in range(1, len(video["frames"]) + 1)]
        for path, frame_index in zip(images, video["frames"], strict=True):
            _assert_is_frame(path, source[frame_index])
            assert Image.open(path).size == (int(sequence["imWidth"]), int(sequence["imHeight"]))
        lines = np.loadtxt(out / name / "gt" / "gt.txt", delimiter=",", ndmin=2)
        expected = sorted((position[r["item_id"]] + 1, r["track_id"], *[round(v, 2) for v in r["bbox"]])
                          for r in t["annotations"].to_pylist() if uri_of.get(r["item_id"]) == video["uri"])
        assert sorted((int(f), int(i), *[round(float(v), 2) for v in box]) for f, i, *box in lines[:, :6]) == expected
        assert (lines[:, 6:] == 1).all()
        boxes += len(expected)
    assert summary["boxes"] == boxes > 0 and summary["frames"] == sum(len(v["frames"]) for v in index.values())

    # TrackEval reads the sequences: samflow's own tracks, scored as a tracker, match them exactly.
    for name in index:
        data = tmp_path / "trackers" / "samflow" / "data"
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / name / "gt" / "gt.txt", data / f"{name}.txt")
    scores = _trackeval(out, tmp_path / "trackers", out / "seqmaps" / "samflow.txt")
    combined = scores["COMBINED_SEQ"]["pedestrian"]
    assert combined["CLEAR"]["MOTA"] == pytest.approx(1.0) and combined["Identity"]["IDF1"] == pytest.approx(1.0)
    assert combined["HOTA"]["HOTA"].mean() == pytest.approx(1.0)
    assert combined["CLEAR"]["CLR_TP"] == boxes


def test_ytvis_export_frames_open_where_the_json_names_them(video_run, tmp_path) -> None:
    from pycocotools import mask as mask_utils

    src, dst, _ = video_run
    samflow("export", "ytvis", dst, "vis/valid.json", cwd=tmp_path)
    data = json.loads((tmp_path / "vis" / "valid.json").read_text())
    t = _tables(dst)
    assert len(data["videos"]) == 4
    assert len(data["annotations"]) == t["tracks"].num_rows
    for video in data["videos"]:  # a VIS loader: every named frame, from the image root beside the JSON
        source = _source_frames(src / Path(video["samflow_uri"]).name)
        assert len(video["file_names"]) == video["length"] == len(video["frame_indices"])
        for name, frame_index in zip(video["file_names"], video["frame_indices"], strict=True):
            _assert_is_frame(tmp_path / "vis" / "JPEGImages" / name, source[frame_index])
    videos = {v["id"]: v for v in data["videos"]}
    tracks = {(r["uri"], r["track_id"]): r for r in t["tracks"].to_pylist()}
    for ann in data["annotations"]:
        video = videos[ann["video_id"]]
        assert len(ann["segmentations"]) == len(ann["bboxes"]) == len(ann["areas"]) == video["length"]
        present = [i for i, s in enumerate(ann["segmentations"]) if s is not None]
        track = tracks[(video["samflow_uri"], ann["samflow_track_id"])]
        assert len(present) == track["num_frames"]
        assert video["frame_indices"][present[0]] == track["first_frame"]
        for i in present:
            rle = dict(ann["segmentations"][i], counts=ann["segmentations"][i]["counts"].encode())
            mask = mask_utils.decode(rle)
            assert mask.shape == (video["height"], video["width"])
            assert int(mask.sum()) == ann["areas"][i] == int(mask_utils.area(rle))
            assert ann["bboxes"][i] == mask_utils.toBbox(rle).tolist()


def test_preview_shows_every_sampled_frame(video_run, tmp_path) -> None:
    _, dst, _ = video_run
    summary = json.loads(samflow("preview", dst, "--out", "page.html", cwd=tmp_path).stdout)
    rows = _tables(dst)["images"].num_rows  # the still and every committed frame, read again
    assert summary["shown"] == rows == (tmp_path / "page.html").read_text().count('class="card"')


def test_export_of_a_destination_without_rows_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    from samflow.cli.main import main

    assert main(["export", "ytvis", str(tmp_path / "nothing"), str(tmp_path / "x.json")]) == 2
    assert main(["export", "mot", str(tmp_path / "nothing"), str(tmp_path / "mot")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("no committed images" in line for line in err)
