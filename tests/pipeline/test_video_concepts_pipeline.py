"""A whole run (local Ray, Prefect, tiny models) with SAM 3's tracker and the concepts stage on:
video tracks are seeded by the vocabulary, and after every later stage (embed relabels
class-agnostic masks) the committed tracks/ rows still agree with the committed mask rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from samflow.config import StorageConfig, load_config
from samflow.flows.annotate import annotate_dataset
from samflow.store.catalog import Catalog
from tests.helpers.tracks import assert_tracks_agree

av = pytest.importorskip("av")
pytestmark = pytest.mark.slow  # a whole annotate run on Ray

from tests.helpers.videos import make_video  # noqa: E402

VOCABULARY = ["red square", "white box"]


def test_a_concept_run_on_videos_commits_labelled_tracks(tmp_path: Path, ray_cluster, prefect_server) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "pan.mp4").write_bytes(make_video("mp4", "libx264", rate=10, n_frames=8))
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(src / "still.png")
    dst = str(tmp_path / "out")
    cfg = load_config(profile="tiny", overrides=[
        "input.video.mode=every_n", "input.video.every_n=1", "input.video.chunk_frames=3",
        "stages.track.reseed_s=0.5", "stages.track.model=tiny://sam3",
        "stages.concepts.enabled=true", "stages.concepts.score_thresh=0.0", "stages.concepts.max_instances=1",
        f"labels.vocabulary=[{', '.join(VOCABULARY)}]",
    ])
    annotate_dataset(str(src), dst, config=cfg.model_dump(mode="json"))
    catalog = Catalog(dst, StorageConfig())
    images, annotations, tracks = (catalog.read_table(n) for n in ("images", "annotations", "tracks"))

    video = [u for u in images["uri"].to_pylist() if u.endswith("pan.mp4")]
    assert len(video) == 8
    frames = annotations.filter(pc.invert(pc.is_null(annotations["track_id"])))
    assert_tracks_agree(tracks, frames, images)
    labels = dict(zip(tracks["track_id"].to_pylist(), tracks["label"].to_pylist()))
    assert set(VOCABULARY) <= set(labels.values())
    for row in frames.to_pylist():  # embed kept every labelled track's label on every frame
        if labels[row["track_id"]] is not None:
            assert row["label"] == labels[row["track_id"]] and row["verified"] is not None
    still = annotations.filter(pc.is_null(annotations["track_id"]))
    assert "concept" in still["source"].to_pylist()  # the still image went through the concepts stage
