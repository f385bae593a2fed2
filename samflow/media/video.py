"""Video -> sampled RGB frames with PyAV (FFmpeg), by fps, every N-th frame, or keyframes.

Frames are yielded one at a time as the demuxer reaches them, so memory does not grow with the
video's length. Damage never passes silently and never costs the frames before it: the frames
decoded so far are yielded, then a :class:`VideoError` says what went wrong (``truncated``,
``corrupt``, ``frames_capped`` when the user's ``max_frames`` cut the sample short, ...).

PyAV is optional: without it, :func:`video_support` says why and the decode stage turns each
video into an ``unsupported_video`` error row instead of frames.
"""

from __future__ import annotations

import heapq
import io
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

import numpy as np

try:
    import av
except ImportError:  # pragma: no cover - depends on the environment
    av = None

# A stream this many undecodable packets in a row is garbage, not a damaged patch: stop there.
_MAX_BAD_RUN = 25
# fps sampling seeks ahead only over at least this many seconds (and two keyframe intervals).
_SEEK_MIN_S = 2.0
# Packets a decoder may hold before it outputs their frames (B-frame reorder, frame threads).
_REORDER_DEPTH = 64
# Container and stream times are rounded to their time bases.
_ROUNDING_S = 0.005


class VideoPolicy(Protocol):
    """How frames are sampled: the ``input.video`` config section."""

    mode: str  # "fps" | "every_n" | "keyframes"
    fps: float
    every_n: int
    max_frames: int  # 0 = no cap


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
    index: int  # position among all frames of the stream, 0-based
    timestamp_s: float  # presentation time from the stream's start (pts x time_base)
    rgb: np.ndarray  # HxWx3 uint8, C-contiguous, display orientation (rotation applied)


def video_support() -> str | None:
    """None when videos can be decoded here; otherwise the reason they cannot."""
    if av is None:
        return "video decoding is not enabled yet: PyAV is not installed (pip install av)"
    return None


class Sampler:
    """Decides, frame by frame, which frames a sampling policy keeps."""

    def __init__(self, sampling: VideoPolicy):
        self.sampling = sampling
        self.next_time = 0.0

    def keep(self, index: int, timestamp_s: float) -> bool:
        mode = self.sampling.mode
        if mode == "every_n":
            return index % max(1, self.sampling.every_n) == 0
        if mode == "keyframes":
            return True  # the caller passes keyframes only
        # fps: the first frame at or after each tick k / fps; ticks missed in a gap are skipped,
        # not burst out afterwards. Times come from pts, so variable frame rates sample right.
        if timestamp_s + 1e-6 < self.next_time:
            return False
        self.next_time = (self.tick(timestamp_s) + 1) / self.sampling.fps
        return True

    def tick(self, timestamp_s: float) -> int:
        return math.floor(timestamp_s * self.sampling.fps + 1e-6)


def _seconds(value: Any, time_base: Any) -> float | None:
    return float(value * time_base) if value is not None and time_base else None


_FIRST_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}  # how MP4 / MOV files begin


def _raise_if_cut_short(source: IO[bytes], detail: str) -> None:
    """An MP4 whose index (moov) comes last loses it when a download stops early: say so."""
    cut = _box_cut_short(source)
    if cut:
        raise VideoError("truncated", f"truncated video: the file ends inside its '{cut}' box ({detail})")


def _box_cut_short(source: IO[bytes]) -> str | None:
    """The type of the top-level ISO-BMFF (MP4 / MOV) box that runs past the end of ``source``,
    or None (not that format, or every box whole)."""
    try:
        end = source.seek(0, io.SEEK_END)
        offset = 0
        while offset + 8 <= end:
            source.seek(offset)
            header = source.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if offset == 0 and kind not in _FIRST_ISO_BOXES:
                return None
            if size == 1:  # a 64-bit size follows the type
                size = int.from_bytes(header[8:16], "big")
            if size < 8:  # 0: the box runs to the end of the file; below 8: not a box
                return None
            if offset + size > end:
                return kind.decode("ascii")
            offset += size
        return None
    except (OSError, ValueError):
        return None


def _rotated(rgb: np.ndarray, rotation: float) -> np.ndarray:
    """Apply the display matrix's rotation (degrees counter-clockwise, as FFmpeg reports it)."""
    turns = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def sample_frames(source: IO[bytes], sampling: VideoPolicy, max_pixels: int) -> Iterator[Frame]:
    """Decode the first video stream of ``source`` (a seekable binary file) and yield the frames
    the sampling policy keeps (at most ``sampling.max_frames`` when that is above 0).

    Raises VideoError before the first frame for a file with no decodable video; a stream that
    breaks, ends before its declared duration, or is capped raises VideoError after yielding
    the frames it had.
    """
    if av is None:
        raise VideoError("unsupported_video", video_support() or "")
    try:
        container = av.open(source, mode="r")
    except av.error.EOFError as exc:
        message = "truncated video: the file ends inside its container header, before any frame"
        raise VideoError("truncated", f"{message} ({exc})") from exc
    except av.error.FFmpegError as exc:
        _raise_if_cut_short(source, str(exc))
        raise VideoError("corrupt", f"corrupt video: FFmpeg cannot read the container ({exc})") from exc
    with container:
        try:
            stream = _video_stream(container, max_pixels)
        except VideoError as err:
            if err.error_type == "no_video_stream":  # the stream list is in the part cut off
                _raise_if_cut_short(source, err.message)
            raise
        yield from _StreamDecoder(container, stream, sampling, max_pixels).frames()


def _video_stream(container: Any, max_pixels: int) -> Any:
    """The first video stream, checked for a decoder and the pixel limit before any decoding."""
    if not container.streams.video:
        raise VideoError("no_video_stream", "the container holds no video stream (audio only?)")
    stream = container.streams.video[0]
    codec = getattr(stream.codec_context, "codec", None) if stream.codec_context else None
    if codec is None:
        tag = getattr(stream.codec_context, "codec_tag", "") if stream.codec_context else ""
        message = "unsupported codec: this FFmpeg build has no decoder for the video stream"
        raise VideoError("unsupported_codec", message + (f" (tag {tag!r})" if tag else ""))
    _check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
    stream.thread_type = "AUTO"
    return stream


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        pixels = width * height
        message = f"video frames are {width}x{height} = {pixels:,} pixels, above the limit of {max_pixels:,}"
        raise VideoError("too_many_pixels", message + " (input.max_pixels)")


class _FrameDurations:
    """The longest a frame of the stream lasts: a packet's own duration, or the time to the next
    frame in display order. Packets come in decode order, reordered by at most ``depth``."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.pending: list[float] = []  # a min-heap of start times not yet in display order
        self.previous: float | None = None
        self.longest = 0.0

    def add(self, start: float, duration: float) -> None:
        self.longest = max(self.longest, duration)
        heapq.heappush(self.pending, start)
        if len(self.pending) > self.depth:
            self._settle(heapq.heappop(self.pending))

    def restart(self) -> None:
        """After a seek: the jump is no frame's duration."""
        self.finish()
        self.previous = None

    def finish(self) -> None:
        while self.pending:
            self._settle(heapq.heappop(self.pending))

    def _settle(self, start: float) -> None:
        if self.previous is not None and start > self.previous:
            self.longest = max(self.longest, start - self.previous)
        self.previous = start


class _StreamDecoder:
    """Demux packet by packet (so the end of the stream is known even when frames are skipped),
    decode, keep what the sampler keeps, then check the stream reached its declared end."""

    def __init__(self, container: Any, stream: Any, sampling: VideoPolicy, max_pixels: int):
        self.container, self.stream, self.sampling = container, stream, sampling
        self.max_pixels = max_pixels
        self.rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        self.start_s = _seconds(stream.start_time, stream.time_base) or 0.0
        self.sampler = Sampler(sampling)
        self.keyframes_only = sampling.mode == "keyframes"
        if self.keyframes_only:  # the decoder drops everything else without decoding it
            stream.codec_context.skip_frame = "NONKEY"
        self.end_s: float | None = None  # latest packet end (pts + its own duration) seen
        self.durations = _FrameDurations(_REORDER_DEPTH)
        self.frames_seen = 0  # frames decoded, or lost to an undecodable packet
        self.kept, self.last_index, self.last_kept_s = 0, -1, 0.0
        self.bad_packets, self.bad_run, self.first_bad_s = 0, 0, None
        self.packets_seen = 0
        self.can_seek, self.seeked = True, False
        self.gop_s: float | None = None  # longest keyframe interval seen
        self.last_key_s: float | None = None
        # (time, keyframe) of the latest packets: the decoder may still hold their frames
        self.recent: deque[tuple[float, bool]] = deque(maxlen=_REORDER_DEPTH)

    def frames(self) -> Iterator[Frame]:
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:  # the container itself is damaged from here on
                raise self._broken(f"reading the container failed ({exc})") from exc
            self._note_packet(packet)
            for frame in self._decode(packet):
                kept = self._sample(frame)
                if kept is None:
                    continue
                yield kept
                if self.sampling.max_frames and self.kept >= self.sampling.max_frames:
                    raise self._capped(packets)
            self._skip_ahead(packet)
        self._finish()

    def _skip_ahead(self, packet: Any) -> None:
        """fps mode: when the next tick lies several keyframe intervals past this packet, seek
        to the keyframe before it instead of decoding everything in between (containers with an
        index; a failed seek just means decoding on). Frames still inside the decoder are all
        earlier than the tick, so dropping them loses nothing."""
        now = self._relative(_seconds(packet.pts, packet.time_base))
        if self.sampling.mode != "fps" or not self.can_seek or now is None or self.gop_s is None:
            return
        target = self.sampler.next_time
        if target - now < max(_SEEK_MIN_S, 2.0 * self.gop_s):
            return
        try:
            offset = int((target + self.start_s) / self.stream.time_base)
            self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
            self.stream.codec_context.flush_buffers()
        except (av.error.FFmpegError, OSError, ValueError):
            self.can_seek = False
            return
        self.seeked = True
        self.last_key_s = None  # the jump is not a keyframe interval
        self.durations.restart()  # nor a frame's duration

    def _decode(self, packet: Any) -> list[Any]:
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            # One damaged packet costs its own frame, not the rest of the video.
            self.bad_packets += 1
            self.bad_run += 1
            self.frames_seen += 1
            if self.first_bad_s is None:
                self.first_bad_s = self._relative(_seconds(packet.pts, packet.time_base))
            if self.bad_run >= _MAX_BAD_RUN:
                raise self._broken(f"{self.bad_run} packets in a row cannot be decoded ({exc})") from exc
            return []
        if frames:
            self.bad_run = 0
        return frames

    def _note_packet(self, packet: Any) -> None:
        start = _seconds(packet.pts, packet.time_base)
        if start is None or packet.size == 0:
            return
        self.packets_seen += 1
        self.recent.append((self._relative(start), bool(packet.is_keyframe)))
        if packet.is_keyframe:
            seconds = self._relative(start)
            if self.last_key_s is not None and seconds > self.last_key_s:
                self.gop_s = max(self.gop_s or 0.0, seconds - self.last_key_s)
            self.last_key_s = seconds
        duration = _seconds(packet.duration, packet.time_base) or 0.0
        self.durations.add(self._relative(start), duration)
        end = self._relative(start) + duration
        self.end_s = end if self.end_s is None else max(self.end_s, end)

    def _relative(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds - self.start_s

    def _sample(self, frame: Any) -> Frame | None:
        timestamp = self._relative(_seconds(frame.pts, frame.time_base))
        if timestamp is None:
            timestamp = self.frames_seen / self.rate if self.rate else float("nan")
        index = self.frames_seen
        if self.keyframes_only or self.seeked:
            # Skipped frames are never decoded (or were sought past), so the position comes from
            # the timestamp (kept strictly increasing so frame ids never collide).
            estimate = round(timestamp * self.rate) if self.rate and not math.isnan(timestamp) else 0
            index = max(self.last_index + 1, estimate)
        self.frames_seen += 1
        if self.keyframes_only and not frame.key_frame:
            return None
        if not self.sampler.keep(index, timestamp):
            return None
        self.last_index, self.last_kept_s = index, timestamp
        self.kept += 1
        rgb = frame.to_ndarray(format="rgb24")
        _check_pixels(rgb.shape[1], rgb.shape[0], self.max_pixels)
        return Frame(index, timestamp, _rotated(rgb, float(getattr(frame, "rotation", 0) or 0)))

    def _capped(self, packets: Iterator[Any]) -> VideoError:
        """The cap was reached: count (from packet headers, without decoding) how many more
        frames the policy would have kept, so the cut is named, never silent. Packets already
        demuxed whose frames the decoder still held count too (``recent``)."""
        keyframes, ticks = 0, set()

        def later(seconds: float, key: bool) -> None:
            nonlocal keyframes
            if seconds <= self.last_kept_s + 1e-6:
                return
            keyframes += key
            if seconds + 1e-6 >= self.sampler.next_time:
                ticks.add(self.sampler.tick(seconds))

        for seconds, key in self.recent:
            later(seconds, key)
        try:
            for packet in packets:
                self._note_packet(packet)
                seconds = self._relative(_seconds(packet.pts, packet.time_base))
                if packet.size and seconds is not None:
                    later(seconds, bool(packet.is_keyframe))
        except av.error.FFmpegError:
            pass  # a damaged tail: the count covers what could be read
        mode = self.sampling.mode
        if mode == "keyframes":
            skipped = keyframes
        elif mode == "every_n":
            n, first, total = max(1, self.sampling.every_n), self.last_index + 1, self.packets_seen
            skipped = max(0, (total - 1) // n - (first - 1) // n) if total > first else 0
        else:
            skipped = len(ticks)
        cap = self.sampling.max_frames
        return VideoError(
            "frames_capped",
            f"input.video.max_frames={cap} kept the first {cap} sampled frames (up to "
            f"{self.last_kept_s:.2f}s); {skipped} more sampled frames were skipped",
        )

    def _broken(self, why: str) -> VideoError:
        where = f"after {self.kept} sampled frames" if self.kept else "before any frame"
        return VideoError("corrupt", f"corrupt video: {why}, {where}")

    def _finish(self) -> None:
        if self.frames_seen == 0:
            raise VideoError("empty_video", "the video stream holds no frames")
        if self.kept == 0 and self.bad_packets == self.frames_seen:
            raise self._broken(f"none of its {self.bad_packets} packets can be decoded")
        if self.bad_packets:
            raise VideoError(
                "corrupt",
                f"corrupt video: {self.bad_packets} damaged packets could not be decoded (the first at "
                f"{self.first_bad_s or 0.0:.2f}s); their frames are missing, the other "
                f"{self.kept} sampled frames were kept",
            )
        self._check_complete()

    def _check_complete(self) -> None:
        """FFmpeg stops quietly at the end of the bytes; a stream ending before the duration its
        container declares by more than a frame lasts was cut short, and that must not pass as
        a complete video. The end is the last packet's time plus its own duration; many muxers
        keep no duration per packet (or only the nominal rate's), so the last frame may last as
        long as the stream's longest frame (a variable-rate video's may last most of a second)."""
        declared = self._declared_s()
        if declared is None or self.end_s is None:
            return
        self.durations.finish()
        frame_s = self.durations.longest or (1.0 / self.rate if self.rate else 0.5)
        if self.end_s + frame_s + _ROUNDING_S < declared:
            raise VideoError(
                "truncated",
                f"truncated video: the stream ends at {self.end_s:.2f}s of the {declared:.2f}s its "
                f"container declares ({self.kept} frames sampled before the cut)",
            )

    def _declared_s(self) -> float | None:
        """The video stream's declared duration; the file's only when the video is its one
        stream (an audio track may outlast the picture in a perfectly good file)."""
        declared = _seconds(self.stream.duration, self.stream.time_base)
        if declared is None and self.container.duration and len(self.container.streams) == 1:
            declared = self.container.duration / 1_000_000  # AV_TIME_BASE
        return declared
