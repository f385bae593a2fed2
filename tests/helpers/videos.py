"""Synthetic videos for tests and benches, made with PyAV: frame i is flat with red = 10 * i (so
a decoded frame says which one it is) and a white square in its top-left corner (so rotation
shows). Also the broken kinds: cut short, fake header, zero frames, unknown codec, a damaged
packet mid-stream, a rotated MP4."""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

WIDTH, HEIGHT = 64, 48


def frame_rgb(i: int, width: int = WIDTH, height: int = HEIGHT, noise: Sequence[np.ndarray] | None = None) -> np.ndarray:
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[:, :, 0] = (10 * i) % 256
    rgb[: height // 3, : width // 4] = 255
    if noise:  # heavy frames (noise in the bottom third), so bytes read say what was decoded
        rgb[-(height // 3) :] = noise[i % len(noise)][-(height // 3) :]
    return rgb


def make_video(
    container: str = "mp4", codec: str = "libx264", *, rate: int = 10, n_frames: int = 25, gop: int = 10,
    width: int = WIDTH, height: int = HEIGHT, times_ms: Sequence[int] | None = None,
    last_ms: int | None = None, noise: Sequence[np.ndarray] | None = None,
) -> bytes:
    """A video of ``n_frames`` frames at ``rate`` fps; or, with ``times_ms``, one frame at each of
    those times (variable frame rate, each packet lasting until the next; the last ``last_ms``)."""
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.gop_size = gop
        if times_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
            durations = {t: b - t for t, b in zip(times_ms, times_ms[1:])} | {times_ms[-1]: last_ms or 40}
        count = len(times_ms) if times_ms is not None else n_frames
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(frame_rgb(i, width, height, noise), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            _mux(out, stream.encode(frame), durations if times_ms is not None else None)
        _mux(out, stream.encode(), durations if times_ms is not None else None)
    return buffer.getvalue()


def _mux(out, packets, durations: dict[int, int] | None) -> None:
    for packet in packets:
        if durations is not None and packet.pts in durations:
            packet.duration = durations[packet.pts]
        out.mux(packet)


def rotated_mp4(degrees_clockwise: int = 90) -> bytes:
    """An MP4 whose track header asks players to turn the picture 90 degrees clockwise (what a
    phone held upright writes): the stored frames stay 64x48."""
    assert degrees_clockwise == 90
    data = bytearray(make_video("mp4", "libx264", n_frames=5))
    tkhd = data.find(b"tkhd")
    assert tkhd > 0 and data[tkhd + 4] == 0  # version 0 box
    matrix = tkhd + 4 + 4 + 4 * 5 + 8 + 8  # after version/flags, times, ids, duration, layer...
    one = 1 << 16
    data[matrix : matrix + 36] = struct.pack(">9i", 0, one, 0, -one, 0, 0, 0, 0, 1 << 30)
    return bytes(data)


def zero_frame_avi() -> bytes:
    """An AVI with a video stream and not a single frame."""
    buffer = io.BytesIO()
    out = av.open(buffer, "w", format="avi")
    stream = out.add_stream("mjpeg", rate=10)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuvj420p"
    out.start_encoding()
    out.close()
    return buffer.getvalue()


def unknown_codec_avi() -> bytes:
    """An AVI whose stream names a codec (fourcc QQQQ) no FFmpeg build decodes."""
    return make_video("avi", "mjpeg", n_frames=5).replace(b"MJPG", b"QQQQ")


def damaged_packet_avi(n_frames: int = 12, bad: int = 5) -> bytes:
    """A 6 fps MJPEG AVI whose ``bad``-th frame's JPEG data is zeroed (a damaged patch)."""
    data = bytearray(make_video("avi", "mjpeg", rate=6, n_frames=n_frames))
    with av.open(io.BytesIO(bytes(data))) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    pos, size = packets[bad]
    data[pos + 20 : pos + size - 20] = bytes(size - 40)
    return bytes(data)


def fake_video() -> bytes:
    """A Matroska signature over noise: sniffed as a video, unreadable as one."""
    return b"\x1a\x45\xdf\xa3" + np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
