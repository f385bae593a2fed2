"""A variable-frame-rate Matroska file as phones and screen recorders leave them: frames that
last from 0.04 to 0.7 s, blocks that carry no duration of their own (the track's default, one
frame at the nominal rate, is all a demuxer reports), and a segment duration that counts the last
frame's whole display time."""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from fractions import Fraction

import av

from tests.helpers.videos import HEIGHT, WIDTH, frame_rgb

# Frame times (ms) of a 14.14 s clip: frames of 0.04 s, 0.7 s and in between, the last one 0.7 s.
VFR_LONG_MS = [0, 40, 80, 120, 820, 860, 1200, 1900, 1940, 2500, 3100, 3140, 3180, 3880, 4500, 4540,
               5200, 5900, 5940, 6600, 7300, 7340, 7380, 8000, 8700, 9400, 9440, 10100, 10800, 10840,
               11500, 12200, 12740, 13440]
VFR_LAST_MS = 700
_SEGMENT_DURATION = b"\x44\x89"  # EBML id of the segment's Duration (a float, in timecode ticks)


def vfr_mkv(times_ms: Sequence[int] = VFR_LONG_MS, last_ms: int = VFR_LAST_MS, nominal_fps: int = 25) -> bytes:
    """H.264 in Matroska, one frame at each of ``times_ms``; the segment declares ``last_ms``
    after the last frame."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=nominal_fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(frame_rgb(i), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)  # no duration: a SimpleBlock
        for packet in stream.encode():
            out.mux(packet)
    return _with_segment_duration(buffer.getvalue(), times_ms[-1] + last_ms)


def _with_segment_duration(data: bytes, ticks: int) -> bytes:
    """The file with its segment Duration element set to ``ticks`` (1 ms each by default)."""
    at = data.index(_SEGMENT_DURATION)
    size = data[at + 2]
    assert size in (0x84, 0x88), f"unexpected Duration size byte {size:#x}"
    packed = struct.pack(">f" if size == 0x84 else ">d", float(ticks))
    return data[: at + 3] + packed + data[at + 3 + len(packed):]
