"""Video frame sampling (PyAV): which frames each policy keeps, their pixels and timestamps,
rotation, streaming in bounded chunks, caps that are never silent, and broken videos as error
rows that keep the frames before the damage. Skipped where PyAV is not installed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from samflow.config import InputConfig, StorageConfig, VideoSampling  # noqa: E402
from samflow.media.decode import DecodeStage  # noqa: E402
from samflow.media.video import VideoError, sample_frames  # noqa: E402
from samflow.schemas.ids import item_id  # noqa: E402
from samflow.store.storage import StorageSource, join, open_file, write_bytes  # noqa: E402
from tests.helpers.vfr_videos import VFR_LONG_MS, vfr_mkv  # noqa: E402
from tests.helpers.videos import (  # noqa: E402
    damaged_packet_avi,
    fake_video,
    make_video,
    rotated_mp4,
    unknown_codec_avi,
    zero_frame_avi,
)

N_FRAMES, RATE = 25, 10  # 2.5 s
CONTAINERS = [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mjpeg"), ("matroska", "mpeg4")]
VFR_MS = [0, 40, 160, 230, 270, 400, 900]  # frame times of the variable-frame-rate clip


def _sample(data: bytes, **policy) -> list:
    return list(sample_frames(io.BytesIO(data), VideoSampling(**policy), max_pixels=10**8))


def _sample_until_error(data: bytes, **policy) -> tuple[list, VideoError | None]:
    frames = []
    try:
        for frame in sample_frames(io.BytesIO(data), VideoSampling(**policy), 10**8):
            frames.append(frame)
    except VideoError as err:
        return frames, err
    return frames, None


def _which(frames: list) -> list[int]:
    """The source frame number each decoded frame shows (from its red level)."""
    return [int(round(f.rgb[f.rgb.shape[0] // 2, f.rgb.shape[1] // 2, 0] / 10)) for f in frames]


def _decode_files(tmp_path: Path, files: dict[str, bytes], **video) -> dict[str, np.ndarray]:
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    cfg = InputConfig(video=VideoSampling(**video))
    return DecodeStage(StorageSource(StorageConfig()), cfg)(
        {"uri": np.array([str(p) for p in paths], dtype=object), "size": np.array([p.stat().st_size for p in paths])}
    )


def _rows_of(out: dict[str, np.ndarray], uri: str) -> list[tuple[int, str]]:
    return [(int(f), str(e)) for u, f, e in zip(out["uri"], out["frame_index"], out["error_type"]) if u.endswith(uri)]


# --- sampling modes ----------------------------------------------------------------------------


@pytest.mark.parametrize(("container", "codec"), CONTAINERS)
def test_every_n_keeps_every_nth_frame_with_its_time(container: str, codec: str) -> None:
    frames = _sample(make_video(container, codec), mode="every_n", every_n=5)
    assert [f.index for f in frames] == [0, 5, 10, 15, 20]
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0], abs=1e-3)
    assert _which(frames) == [0, 5, 10, 15, 20]
    assert all(f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 for f in frames)


@pytest.mark.parametrize(("container", "codec"), CONTAINERS)
def test_fps_sampling_picks_one_frame_per_period(container: str, codec: str) -> None:
    frames = _sample(make_video(container, codec), mode="fps", fps=2.0)
    assert [f.index for f in frames] == [0, 5, 10, 15, 20]
    assert _which(frames) == [0, 5, 10, 15, 20]
    frames = _sample(make_video(container, codec), mode="fps", fps=0.75)  # ticks at 0, 1.33, 2.67 s
    assert [f.index for f in frames] == [0, 14]


def test_fps_sampling_follows_pts_on_a_variable_frame_rate_video() -> None:
    data = make_video("matroska", "libx264", times_ms=VFR_MS, last_ms=600)
    every = _sample(data, mode="every_n", every_n=1)
    assert [f.timestamp_s for f in every] == pytest.approx([t / 1000 for t in VFR_MS], abs=1e-3)
    frames = _sample(data, mode="fps", fps=5.0)  # ticks every 0.2 s: 0, 0.2, 0.4, (0.6, 0.8 empty)
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.23, 0.4, 0.9], abs=1e-3)
    assert [f.index for f in frames] == [0, 3, 5, 6]
    assert _which(frames) == [0, 3, 5, 6]


@pytest.mark.parametrize(("container", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_keyframes_mode_returns_only_keyframes_at_their_true_position(container: str, codec: str) -> None:
    frames = _sample(make_video(container, codec, gop=10), mode="keyframes")
    assert [f.index for f in frames] == [0, 10, 20]
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 1.0, 2.0], abs=1e-3)
    assert _which(frames) == [0, 10, 20]


def test_rotation_metadata_is_applied() -> None:
    frames = _sample(rotated_mp4(), mode="every_n", every_n=1)
    assert len(frames) == 5
    for frame in frames:
        assert frame.rgb.shape == (64, 48, 3)  # stored 64x48 landscape, shown portrait
        # the white square stored top-left shows top-right after a clockwise quarter turn
        assert frame.rgb[2, 45].min() > 200 and frame.rgb[2, 2].max() < 80
        assert frame.rgb[62, 2].max() < 80


# --- caps are opt-in and never silent ----------------------------------------------------------


def test_no_cap_by_default_a_long_video_keeps_every_sampled_frame() -> None:
    assert VideoSampling().max_frames == 0
    data = make_video("matroska", "mpeg4", rate=30, n_frames=400, gop=30)
    frames, err = _sample_until_error(data, mode="every_n", every_n=1)
    assert err is None and len(frames) == 400


@pytest.mark.parametrize(("policy", "kept", "skipped"), [
    ({"mode": "every_n", "every_n": 1}, [0, 1, 2], 22),
    ({"mode": "every_n", "every_n": 4}, [0, 4, 8], 4),  # 12, 16, 20, 24
    ({"mode": "fps", "fps": 2.0}, [0, 5, 10], 2),  # 1.5 s, 2.0 s
    ({"mode": "keyframes"}, [0, 5, 10], 2),  # gop 5: 15, 20
])
def test_a_user_cap_keeps_the_first_frames_and_names_what_it_skipped(policy, kept, skipped) -> None:
    frames, err = _sample_until_error(make_video(gop=5), max_frames=3, **policy)
    assert [f.index for f in frames] == kept
    assert err is not None and err.error_type == "frames_capped"
    assert f"{skipped} more sampled frames were skipped" in err.message and "max_frames=3" in err.message


# --- good files that must not be called broken -------------------------------------------------


@pytest.mark.parametrize("data", [
    pytest.param(make_video("avi", "mjpeg", rate=6, n_frames=30), id="6fps-avi"),
    pytest.param(make_video("matroska", "libx264", times_ms=VFR_MS, last_ms=600), id="vfr-mkv-long-last-frame"),
    pytest.param(make_video("matroska", "libx264", times_ms=VFR_MS, last_ms=40), id="vfr-mkv"),
    pytest.param(make_video("webm", "libvpx-vp9", rate=6, n_frames=13), id="6fps-webm"),
    pytest.param(vfr_mkv(), id="vfr-mkv-no-block-durations"),
])
def test_good_low_and_variable_rate_videos_are_not_truncated(data: bytes) -> None:
    frames, err = _sample_until_error(data, mode="every_n", every_n=1)
    assert err is None, err
    assert frames and [f.index for f in frames] == list(range(len(frames)))


@pytest.mark.parametrize("policy", [{"mode": "every_n", "every_n": 1}, {"mode": "keyframes"}, {"mode": "fps", "fps": 1.0}])
def test_a_variable_rate_mkv_whose_last_frame_lasts_long_is_whole(policy: dict) -> None:
    """Its blocks carry no durations and its last frame lasts 0.7 s, which the segment counts:
    the stream's own frames last up to 0.7 s, so nothing is missing."""
    frames, err = _sample_until_error(vfr_mkv(), **policy)
    assert err is None, err
    if policy["mode"] == "every_n":
        assert [f.timestamp_s for f in frames] == pytest.approx([t / 1000 for t in VFR_LONG_MS], abs=1e-3)


def test_a_variable_rate_mkv_missing_its_last_frames_is_truncated() -> None:
    whole = vfr_mkv()
    with av.open(io.BytesIO(whole)) as container:  # cut where the third-last frame's block starts
        stream = container.streams.video[0]
        cut_at = next(p.pos for p in container.demux(stream) if p.pts == VFR_LONG_MS[-3])
    frames, err = _sample_until_error(whole[:cut_at], mode="every_n", every_n=1)
    assert err is not None and err.error_type == "truncated", err
    assert "of the 14.14s" in err.message and 0 < len(frames) < len(VFR_LONG_MS)


# --- broken videos -----------------------------------------------------------------------------


def test_cut_short_stream_raises_after_the_frames_it_had() -> None:
    data = make_video("webm", "libvpx-vp9")
    frames, err = _sample_until_error(data[: len(data) // 2], mode="every_n", every_n=1)
    assert err is not None and err.error_type == "truncated" and "2.50s" in err.message
    assert 0 < len(frames) < N_FRAMES
    assert _which(frames) == list(range(len(frames)))


def test_a_damaged_packet_costs_its_frame_only_and_is_reported() -> None:
    frames, err = _sample_until_error(damaged_packet_avi(n_frames=12, bad=5), mode="every_n", every_n=1)
    assert err is not None and err.error_type == "corrupt" and "1 damaged packets" in err.message
    assert 5 not in _which(frames) and len(frames) == 11
    assert _which(frames)[:5] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("data", "error_type", "words"), [
    (b"", "empty_file", "0 bytes"),
    (fake_video(), "corrupt", "cannot read the container"),
    (zero_frame_avi(), "empty_video", "no frames"),
    (unknown_codec_avi(), "unsupported_codec", "no decoder"),
])
def test_unreadable_videos_become_one_clear_error_row(tmp_path: Path, data: bytes, error_type: str, words: str) -> None:
    out = _decode_files(tmp_path, {"bad.video": data}, mode="every_n", every_n=1)
    assert list(out["error_type"]) == [error_type]
    assert words in out["error_message"][0]


def test_frame_size_over_max_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(VideoError) as caught:
        list(sample_frames(io.BytesIO(make_video()), VideoSampling(), max_pixels=1000))
    assert caught.value.error_type == "too_many_pixels"


def test_stage_emits_one_row_per_sampled_frame_and_error_rows(tmp_path: Path) -> None:
    whole = make_video("webm", "libvpx-vp9")
    files = {
        "clip.mp4": make_video(),
        "cut.webm": whole[: len(whole) // 2],
        "moov_lost.mp4": make_video()[:2000],
        "damaged.avi": damaged_packet_avi(n_frames=12, bad=5),
        "capped.mkv": make_video("matroska", "mpeg4"),
    }
    out = _decode_files(tmp_path, files, mode="every_n", every_n=10)
    good = str(tmp_path / "clip.mp4")
    assert _rows_of(out, "clip.mp4") == [(0, ""), (10, ""), (20, "")]
    assert [out["item_id"][i] for i, u in enumerate(out["uri"]) if u == good] == [item_id(good, i) for i in (0, 10, 20)]
    assert [t for t, u in zip(out["timestamp_s"], out["uri"]) if u == good] == pytest.approx([0.0, 1.0, 2.0], abs=1e-3)
    assert [e for _, e in _rows_of(out, "cut.webm")] == ["", "truncated"]  # the frame it had, then why it stopped
    assert _rows_of(out, "moov_lost.mp4") == [(0, "truncated")]  # cut inside its header
    assert _rows_of(out, "damaged.avi") == [(0, ""), (10, ""), (0, "corrupt")]
    for i in range(len(out["uri"])):
        if out["error_type"][i] == "":
            assert len(out["pixels"][i]) == out["height"][i] * out["width"][i] * 3
    capped = _decode_files(tmp_path, {"capped.mkv": files["capped.mkv"]}, mode="every_n", every_n=10, max_frames=1)
    assert _rows_of(capped, "capped.mkv") == [(0, ""), (0, "frames_capped")]
    assert "2 more sampled frames were skipped" in capped["error_message"][1]


# --- streaming ---------------------------------------------------------------------------------


def test_stage_streams_a_video_in_bounded_chunks_in_order(tmp_path: Path) -> None:
    path = tmp_path / "long.mkv"
    path.write_bytes(make_video("matroska", "mpeg4", rate=30, n_frames=100, gop=30))
    stage = DecodeStage(StorageSource(StorageConfig()), InputConfig(video=VideoSampling(mode="every_n", every_n=1, chunk_frames=8)))
    chunks = stage.stream({"uri": np.array([str(path)], dtype=object), "size": np.array([path.stat().st_size])})
    first = next(chunks)  # a generator: the first chunk leaves before the rest is decoded
    sizes, indices = [len(first["uri"])], list(first["frame_index"])
    for chunk in chunks:
        sizes.append(len(chunk["uri"]))
        indices.extend(chunk["frame_index"])
    assert max(sizes) == 8 and sum(sizes) == 100
    assert indices == list(range(100))


def test_deferred_videos_become_one_pending_row_and_images_decode(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "clip.webm").write_bytes(make_video("webm", "libvpx-vp9"))
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "still.png")
    paths = [tmp_path / "clip.webm", tmp_path / "still.png"]
    stage = DecodeStage(StorageSource(StorageConfig()), InputConfig(), defer_videos=True)
    out = stage({"uri": np.array([str(p) for p in paths], dtype=object), "size": np.array([p.stat().st_size for p in paths])})
    assert list(out["video_pending"]) == [True, False]
    assert list(out["error_type"]) == ["", ""] and out["pixels"][0] == b"" and len(out["pixels"][1]) == 8 * 6 * 3
    frames = list(stage.video_frames(str(paths[0])))
    assert len(frames) == 3  # input.video default: 1 fps over 2.5 s


def test_video_streams_from_s3_without_a_full_download(s3_bucket: str) -> None:
    storage = StorageConfig()
    uri = join(s3_bucket, "videos", "clip.mkv")
    write_bytes(uri, make_video("matroska", "mpeg4"), storage)
    with open_file(uri, storage) as source:
        frames = list(sample_frames(source, VideoSampling(mode="every_n", every_n=12), 10**8))
    assert [f.index for f in frames] == [0, 12, 24]


@pytest.mark.parametrize(("container", "codec", "kind"), [
    ("mpegts", "libx264", "mpegts"), ("flv", "flv", "flv"), ("asf", "wmv2", "asf"),
    ("mpeg", "mpeg1video", "mpeg"), ("yuv4mpegpipe", "rawvideo", "y4m"),
])
def test_other_containers_are_sniffed_as_video_and_sampled(tmp_path: Path, container: str, codec: str, kind: str) -> None:
    from samflow.media.filetypes import sniff_kind

    data = make_video(container, codec, rate=25, n_frames=25)
    assert sniff_kind(data[:64]) == kind
    out = _decode_files(tmp_path, {"clip.bin": data}, mode="fps", fps=5.0)
    assert list(out["error_type"]) == [""] * 5
    assert list(out["timestamp_s"]) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8], abs=0.02)


class _CountingFile(io.BytesIO):
    """A file that counts the bytes read from it."""

    read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


@pytest.mark.parametrize(("container", "codec"), [("mp4", "libx264"), ("matroska", "libx264"), ("webm", "libvpx-vp9")])
def test_sparse_fps_sampling_seeks_past_what_it_does_not_need(container: str, codec: str) -> None:
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(4)]
    data = make_video(container, codec, rate=10, n_frames=300, gop=10, noise=noise, width=160, height=120)  # 30 s
    source = _CountingFile(data)
    frames = list(sample_frames(source, VideoSampling(mode="fps", fps=0.1), 10**8))  # ticks 0, 10, 20 s
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 10.0, 20.0], abs=1e-3)
    assert [f.index for f in frames] == [0, 100, 200]
    assert [int(f.rgb[60, 80, 0]) for f in frames] == pytest.approx([0, 1000 % 256, 2000 % 256], abs=3)
    assert source.read_bytes < len(data) // 2  # two thirds of every 10 s never read


@pytest.mark.parametrize("where", ["inside the media data", "inside the index"])
def test_an_mp4_cut_short_is_truncated_wherever_the_cut_falls(where: str) -> None:
    """A download that stops early: the index (moov) of a camera / x264 MP4 comes last, so the
    cut falls in the media data (FFmpeg: "moov atom not found") or in the index itself."""
    whole = make_video()
    moov = whole.index(b"moov") - 4
    assert whole.index(b"mdat") < moov  # the layout this test is about
    cut = whole[: 200] if where == "inside the media data" else whole[: moov + 20]
    with pytest.raises(VideoError) as caught:
        list(sample_frames(io.BytesIO(cut), VideoSampling(), max_pixels=10**8))
    assert caught.value.error_type == "truncated", caught.value.message
