"""Source pictures read again after a run: the preview, search by image, serve and the video
exports decode through the decode stage's own code (EXIF rotation, colour modes, 16-bit, limits;
a video's frames sampled by the run's own policy and picked by frame index), so the pixels are the
ones the run's masks and vectors were made from."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from samflow.media.decode import ByteSource, DecodeStage, InputLimits
from samflow.media.image import DecodeError, decode_image
from samflow.media.video import Frame, VideoError

# What reading a picture again may raise: the decoder's own errors, and storage failing.
ReadError = (DecodeError, VideoError, OSError)


def picture(data: bytes, limits: InputLimits) -> np.ndarray:
    """A still image's bytes -> HxWx3 uint8 RGB exactly as the decode stage makes it; DecodeError."""
    if len(data) > limits.max_bytes:
        raise DecodeError("too_large", f"file is {len(data):,} bytes, above the limit of {limits.max_bytes:,} "
                                       "(input.max_bytes)")
    return decode_image(data, limits.max_pixels)


class Pictures:
    """A run's source pictures by URI. ``limits(run_id)`` is the ``input`` section the run that
    made a row decoded with (its limits and video sampling)."""

    def __init__(self, source: ByteSource, limits: Callable[[str], InputLimits]) -> None:
        self.source = source
        self.limits = limits

    def image(self, uri: str, run_id: str = "") -> np.ndarray:
        """The still image at ``uri``; DecodeError."""
        try:
            data = self.source.read(uri)
        except FileNotFoundError:
            raise DecodeError("not_found", "file not found (moved or deleted since the run?)") from None
        except OSError as exc:
            raise DecodeError("read_failed", f"could not read: {type(exc).__name__}: {exc}") from exc
        return picture(data, self.limits(run_id))

    def frames(self, uri: str, indices: Iterable[int], run_id: str = "") -> Iterator[Frame]:
        """The sampled frames of the video at ``uri`` with these frame indices, in order;
        DecodeError / VideoError when the video cannot give them all."""
        wanted = set(indices)
        if not wanted:
            return
        stage = DecodeStage(self.source, self.limits(run_id))
        with contextlib.closing(stage.video_frames(uri)) as decoded:
            for frame in decoded:
                if frame.index in wanted:
                    wanted.discard(frame.index)
                    yield frame
                    if not wanted:
                        return
        missing = sorted(wanted)
        raise DecodeError("frames_missing", f"frames {missing[:5]}{' ...' if len(missing) > 5 else ''} are not in "
                                            "the video any more (changed since the run?)")

    def rows(self, rows: Sequence[Mapping[str, Any]]) -> Iterator[tuple[int, np.ndarray | Exception]]:
        """(position, pixels or the error that stopped them) of each images-table row (``uri``,
        ``frame_index``, ``timestamp_s``, ``run_id``), in no set order; a video is decoded once
        for all its rows. A row whose frame could not be decoded gets the error."""
        videos: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for position, row in enumerate(rows):
            if row.get("timestamp_s") is None:  # a still image
                yield position, self._guarded(lambda row=row: self.image(row["uri"], row.get("run_id") or ""))
            else:
                videos[(row["uri"], row.get("run_id") or "")][int(row["frame_index"])].append(position)
        for (uri, run_id), positions in videos.items():
            yield from self._video_rows(uri, run_id, positions)

    def _video_rows(self, uri: str, run_id: str, positions: dict[int, list[int]]
                    ) -> Iterator[tuple[int, np.ndarray | Exception]]:
        pending = dict(positions)
        try:
            for frame in self.frames(uri, pending, run_id):
                for position in pending.pop(frame.index):
                    yield position, frame.rgb
        except ReadError as exc:
            for group in pending.values():
                for position in group:
                    yield position, exc

    @staticmethod
    def _guarded(read: Callable[[], np.ndarray]) -> np.ndarray | Exception:
        try:
            return read()
        except ReadError as exc:
            return exc
