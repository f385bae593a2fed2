"""Video -> sampled RGB frames with PyAV (FFmpeg), by fps, every N-th frame, or keyframes.

PyAV is optional: without it, :func:`video_support` says why and the decode stage turns each
video into an ``unsupported_video`` error row instead of frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

import numpy as np


try:
    import av
except ImportError:  # pragma: no cover - depends on the environment
    av = None


class VideoPolicy(Protocol):
    """How frames are sampled: the ``input.video`` config section."""

    mode: str  # "fps" | "every_n" | "keyframes"
    fps: float
    every_n: int
    max_frames: int


class VideoError(Exception):
    """A video that yields no frames (or stops yielding them); same fields as DecodeError."""

    def __init__(self, error_type: str, message: str):
        super().__init__(error_type, message)
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


@dataclass(frozen=True)
class Frame:
    index: int  # position among all decoded frames of the stream, 0-based
    timestamp_s: float
    rgb: np.ndarray  # HxWx3 uint8, C-contiguous


def video_support() -> str | None:
    """None when videos can be decoded here; otherwise the reason they cannot."""
    if av is None:
        return "video decoding is not enabled yet: PyAV is not installed (pip install av)"
    return None


class _Sampler:
    """Decides, frame by frame, which frames a sampling policy keeps."""

    def __init__(self, sampling: VideoPolicy):
        self.sampling = sampling
        self.next_time = 0.0

    def keep(self, index: int, timestamp_s: float) -> bool:
        mode = self.sampling.mode
        if mode == "every_n":
            return index % max(1, self.sampling.every_n) == 0
        if mode == "keyframes":
            return True  # the decoder is told to skip everything else
        # fps: the first frame at or after each tick k / fps; ticks missed in a gap are skipped,
        # not burst out afterwards.
        if timestamp_s + 1e-6 < self.next_time:
            return False
        period = 1.0 / self.sampling.fps
        self.next_time = (math.floor(timestamp_s / period + 1e-6) + 1) * period
        return True


def _seconds(value: Any, time_base: Any) -> float | None:
    return float(value * time_base) if value is not None and time_base else None


def _rotated(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the container's display rotation (degrees counter-clockwise, as FFmpeg reports)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def sample_frames(source: IO[bytes], sampling: VideoPolicy, max_pixels: int) -> Iterator[Frame]:
    """Decode the first video stream of ``source`` (a seekable binary file) and yield the frames
    the sampling policy keeps, at most ``sampling.max_frames``.

    Raises VideoError before the first frame for a file with no decodable video; a stream that
    breaks after some frames raises VideoError after yielding them.
    """
    if av is None:
        raise VideoError("unsupported_video", video_support() or "")
    try:
        container = av.open(source, mode="r")
    except av.error.FFmpegError as exc:
        raise VideoError("corrupt", f"corrupt video: FFmpeg cannot read the container ({exc})") from exc
    with container:
        if not container.streams.video:
            raise VideoError("no_video_stream", "the container holds no video stream (audio only?)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            pixels = width * height
            message = f"video frames are {width}x{height} = {pixels:,} pixels, above the limit of {max_pixels:,}"
            raise VideoError("too_many_pixels", message + " (input.max_pixels)")
        if sampling.mode == "keyframes":
            stream.codec_context.skip_frame = "NONKEY"
        rate = float(stream.average_rate) if stream.average_rate else None
        yield from _decode(container, stream, sampling, rate)


def _duration_s(container: Any, stream: Any) -> float | None:
    """The duration the container declares (stream's, else the file's), if any."""
    declared = _seconds(stream.duration, stream.time_base)
    if declared is None and container.duration:
        declared = container.duration / 1_000_000  # AV_TIME_BASE
    return declared


def _decode(container: Any, stream: Any, sampling: VideoPolicy, rate: float | None) -> Iterator[Frame]:
    """Demux packet by packet (so the last packet's time is known even when the decoder skips
    frames), decode, keep what the sampler keeps; then check the stream reached its declared end."""
    sampler = _Sampler(sampling)
    keyframes_only = sampling.mode == "keyframes"
    kept, decoded, last_index = 0, 0, -1
    last_packet_s = None
    try:
        for packet in container.demux(stream):
            packet_s = _seconds(packet.pts, packet.time_base)
            if packet_s is not None:
                last_packet_s = packet_s if last_packet_s is None else max(last_packet_s, packet_s)
            for frame in packet.decode():
                timestamp = _seconds(frame.pts, frame.time_base)
                if timestamp is None:
                    timestamp = decoded / rate if rate else float("nan")
                # Every frame is decoded except in keyframe mode, where the position comes from
                # the timestamp (kept strictly increasing so frame ids never collide).
                index = decoded
                if keyframes_only:
                    estimate = round(timestamp * rate) if rate and not math.isnan(timestamp) else 0
                    index = max(last_index + 1, estimate)
                decoded += 1
                if keyframes_only and not frame.key_frame:
                    continue
                if not sampler.keep(index, timestamp):
                    continue
                last_index = index
                rgb = _rotated(frame.to_ndarray(format="rgb24"), int(getattr(frame, "rotation", 0) or 0))
                yield Frame(index, timestamp, np.ascontiguousarray(rgb))
                kept += 1
                if kept >= sampling.max_frames:
                    return
    except av.error.FFmpegError as exc:
        where = f"after {kept} sampled frames" if kept else "before any frame"
        raise VideoError("corrupt", f"corrupt video: decoding failed {where} ({exc})") from exc
    if kept == 0:
        raise VideoError("corrupt", "corrupt video: the stream holds no decodable frame")
    _check_complete(container, stream, last_packet_s, rate, kept)


def _check_complete(
    container: Any, stream: Any, last_packet_s: float | None, rate: float | None, kept: int
) -> None:
    """FFmpeg stops quietly at the end of the bytes; a stream ending well before the duration its
    container declares was cut short, and that must not pass as a complete video."""
    declared = _duration_s(container, stream)
    if declared is None or last_packet_s is None:
        return
    start = _seconds(stream.start_time, stream.time_base) or 0.0
    slack = 2.0 / rate if rate else 0.5
    if last_packet_s - start + slack < declared:
        raise VideoError(
            "truncated",
            f"truncated video: the stream ends at {last_packet_s - start:.2f}s of the {declared:.2f}s "
            f"its container declares ({kept} frames sampled before the cut)",
        )
