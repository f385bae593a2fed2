"""Videos through the whole run (local Ray, Prefect, tiny models): frames stream out of the
track stage with track ids, the tracks/ table agrees with the annotation rows, images are
untouched, a cut-short video keeps its frames plus one error row, a video whose last chunk fails
keeps its tracks, and the MOT and YouTube-VIS
exports of the committed rows load back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from samflow.config import StorageConfig, load_config
from samflow.flows.annotate import annotate_dataset
from samflow.store.catalog import Catalog
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
    assert sorted(frames["banner.ts"]) == list(range(6))
    assert frames["still.png"] == [0]
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


def test_mot_export_loads_back_and_matches_the_tracked_masks(video_run, tmp_path) -> None:
    from samflow.cli.main import main

    _, dst, _ = video_run
    assert main(["export", "mot", dst, str(tmp_path / "mot")]) == 0
    index = json.loads((tmp_path / "mot" / "videos.json").read_text())
    assert sorted(Path(v["uri"]).name for v in index.values()) == ["banner.ts", "cut.webm", "pan.mp4", "walk.mkv"]
    t = _tables(dst)
    frame_of = dict(zip(t["images"]["item_id"].to_pylist(), t["images"]["frame_index"].to_pylist()))
    uri_of = dict(zip(t["images"]["item_id"].to_pylist(), t["images"]["uri"].to_pylist()))
    for name, video in index.items():
        lines = np.loadtxt(tmp_path / "mot" / f"{name}.txt", delimiter=",", ndmin=2)
        assert lines.shape[1] == 10
        expected = sorted(
            (frame_of[r["item_id"]] + 1, r["track_id"], *[round(v, 2) for v in r["bbox"]])
            for r in t["annotations"].to_pylist() if uri_of.get(r["item_id"]) == video["uri"]
        )
        got = sorted((int(f), int(i), *[round(float(v), 2) for v in box]) for f, i, *box in lines[:, :6])
        assert got == expected
        assert (lines[:, 7:] == -1).all()


def test_ytvis_export_loads_back_with_pycocotools(video_run, tmp_path) -> None:
    from pycocotools import mask as mask_utils

    from samflow.cli.main import main

    _, dst, _ = video_run
    out = tmp_path / "vis.json"
    assert main(["export", "ytvis", dst, str(out)]) == 0
    data = json.loads(out.read_text())
    t = _tables(dst)
    assert len(data["videos"]) == 4
    assert len(data["annotations"]) == t["tracks"].num_rows
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


def test_export_of_a_destination_without_rows_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    from samflow.cli.main import main

    assert main(["export", "ytvis", str(tmp_path / "nothing"), str(tmp_path / "x.json")]) == 2
    assert main(["export", "mot", str(tmp_path / "nothing"), str(tmp_path / "mot")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("no committed images" in line for line in err)
