"""Videos through the whole run (local Ray, Prefect, tiny models): frames stream out of the
track stage with track ids, the tracks/ table agrees with the annotation rows, images are
untouched, a cut-short video keeps its frames plus one error row, and the MOT and YouTube-VIS
exports of the committed rows load back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from samflow.flows.annotate import annotate_dataset
from samflow.flows.catalog import Catalog
from samflow.flows.config import StorageConfig, load_config
from tests.test_track import _assert_tracks_agree

av = pytest.importorskip("av")

from tests.videos import make_video  # noqa: E402


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, ray_cluster, prefect_server):
    src = tmp_path_factory.mktemp("videos_src")
    (src / "walk.mkv").write_bytes(make_video("matroska", "mpeg4", rate=10, n_frames=12))
    (src / "pan.mp4").write_bytes(make_video("mp4", "libx264", rate=10, n_frames=8))
    whole = make_video("webm", "libvpx-vp9", rate=10, n_frames=25)
    (src / "cut.webm").write_bytes(whole[: len(whole) // 2])
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(src / "still.png")
    dst = str(tmp_path_factory.mktemp("videos_out") / "out")
    cfg = load_config(profile="tiny", overrides=[
        "input.video.mode=every_n", "input.video.every_n=1", "input.video.chunk_frames=4",
        "stages.track.reseed_s=0.5", "stages.embed.enabled=false", "output.shard_rows=5",
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
    assert 0 < len(frames["cut.webm"]) < 25
    errors = [(Path(r["uri"]).name, r["error_type"]) for r in t["errors"].to_pylist()]
    assert errors == [("cut.webm", "truncated")]


def test_video_masks_carry_track_ids_that_the_tracks_table_summarises(video_run) -> None:
    _, dst, _ = video_run
    t = _tables(dst)
    images, annotations, tracks = t["images"], t["annotations"], t["tracks"]
    still = images.filter(pc.match_substring(images["uri"], "still.png"))["item_id"].to_pylist()
    for name in ("walk.mkv", "pan.mp4", "cut.webm"):
        items = images.filter(pc.match_substring(images["uri"], name))["item_id"]
        ann = annotations.filter(pc.is_in(annotations["item_id"], items))
        assert ann.num_rows > 0 and ann["track_id"].null_count == 0
        _assert_tracks_agree(tracks.filter(pc.match_substring(tracks["uri"], name)), ann, images)
    still_ann = annotations.filter(pc.is_in(annotations["item_id"], pa.array(still)))
    assert still_ann.num_rows > 0 and still_ann["track_id"].null_count == still_ann.num_rows
