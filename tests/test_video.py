"""Video frame sampling (PyAV): which frames each policy keeps, their pixels and timestamps, and
cut-short or broken videos as error rows. Skipped where PyAV is not installed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from samflow.actors.decode import DecodeStage  # noqa: E402
from samflow.actors.video import VideoError, sample_frames  # noqa: E402
from samflow.flows.config import InputConfig, StorageConfig, VideoSampling  # noqa: E402
from samflow.flows.storage import StorageSource, join, open_file, write_bytes  # noqa: E402
from samflow.schemas.ids import item_id  # noqa: E402

N_FRAMES, RATE = 25, 10  # 2.5 s


def make_video(container: str = "mp4", codec: str = "libx264", gop: int = 10, n_frames: int = N_FRAMES) -> bytes:
    """Frame i is flat with red = 10 * i, so a decoded frame tells which one it is."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(n_frames):
            rgb = np.zeros((48, 64, 3), dtype=np.uint8)
            rgb[:, :, 0] = 10 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def _sample(data: bytes, **policy) -> list:
    return list(sample_frames(io.BytesIO(data), VideoSampling(**policy), max_pixels=10**8))


def _which(frames: list) -> list[int]:
    """The source frame number each decoded frame shows (from its red level)."""
    return [int(round(f.rgb[24, 32, 0] / 10)) for f in frames]


@pytest.mark.parametrize(("container", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("matroska", "mpeg4")])
def test_every_n_keeps_every_nth_frame_with_its_time(container: str, codec: str) -> None:
    frames = _sample(make_video(container, codec), mode="every_n", every_n=5)
    assert [f.index for f in frames] == [0, 5, 10, 15, 20]
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0], abs=1e-3)
    assert _which(frames) == [0, 5, 10, 15, 20]
    assert all(f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 for f in frames)


def test_fps_sampling_picks_one_frame_per_period() -> None:
    frames = _sample(make_video(), mode="fps", fps=2.0)
    assert [f.index for f in frames] == [0, 5, 10, 15, 20]
    frames = _sample(make_video(), mode="fps", fps=0.75)  # ticks at 0, 1.33, 2.67 s
    assert [f.index for f in frames] == [0, 14]


def test_keyframes_mode_returns_only_keyframes_at_their_true_position() -> None:
    frames = _sample(make_video(gop=10), mode="keyframes")
    assert [f.index for f in frames] == [0, 10, 20]
    assert _which(frames) == [0, 10, 20]


def test_max_frames_caps_the_sample() -> None:
    assert [f.index for f in _sample(make_video(), mode="every_n", every_n=1, max_frames=3)] == [0, 1, 2]


def test_cut_short_stream_raises_after_the_frames_it_had() -> None:
    data = make_video("webm", "libvpx-vp9")
    frames = []
    with pytest.raises(VideoError) as caught:
        for frame in sample_frames(io.BytesIO(data[: len(data) // 2]), VideoSampling(mode="every_n", every_n=1), 10**8):
            frames.append(frame)
    assert caught.value.error_type == "truncated" and "2.50s" in caught.value.message
    assert 0 < len(frames) < N_FRAMES


def test_frame_size_over_max_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(VideoError) as caught:
        list(sample_frames(io.BytesIO(make_video()), VideoSampling(), max_pixels=1000))
    assert caught.value.error_type == "too_many_pixels"


def test_stage_emits_one_row_per_sampled_frame_and_error_rows(tmp_path: Path) -> None:
    good = tmp_path / "clip.mp4"
    good.write_bytes(make_video())
    cut = tmp_path / "cut.webm"
    whole = make_video("webm", "libvpx-vp9")
    cut.write_bytes(whole[: len(whole) // 2])
    moov_lost = tmp_path / "moov_lost.mp4"
    moov_lost.write_bytes(good.read_bytes()[:2000])
    files = [good, cut, moov_lost]
    cfg = InputConfig(video=VideoSampling(mode="every_n", every_n=10))
    out = DecodeStage(StorageSource(StorageConfig()), cfg)(
        {"uri": np.array([str(p) for p in files], dtype=object), "size": np.array([p.stat().st_size for p in files])}
    )
    rows = list(zip(out["uri"], out["frame_index"], out["error_type"], out["item_id"], out["timestamp_s"]))
    clip_rows = [r for r in rows if r[0] == str(good)]
    assert [(r[1], r[2]) for r in clip_rows] == [(0, ""), (10, ""), (20, "")]
    assert [r[3] for r in clip_rows] == [item_id(str(good), i) for i in (0, 10, 20)]
    assert [r[4] for r in clip_rows] == pytest.approx([0.0, 1.0, 2.0], abs=1e-3)
    cut_rows = [r for r in rows if r[0] == str(cut)]
    assert [r[2] for r in cut_rows] == ["", "truncated"]  # the frame it had, then why it stopped
    assert [r[2] for r in rows if r[0] == str(moov_lost)] == ["corrupt"]
    for i, uri in enumerate(out["uri"]):
        if out["error_type"][i] == "":
            assert len(out["pixels"][i]) == out["height"][i] * out["width"][i] * 3


def test_video_streams_from_s3_without_a_full_download(s3_bucket: str) -> None:
    storage = StorageConfig()
    uri = join(s3_bucket, "videos", "clip.mkv")
    write_bytes(uri, make_video("matroska", "mpeg4"), storage)
    with open_file(uri, storage) as source:
        frames = list(sample_frames(source, VideoSampling(mode="every_n", every_n=12), 10**8))
    assert [f.index for f in frames] == [0, 12, 24]
