"""The sampled frames of exported videos as JPEG files, decoded again from the source videos by
the pipeline's own decoder (``samflow.media.reread``), so each picture is the one its masks were
made on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from samflow.errors import UserError
from samflow.exporters.videos import VideoFrames
from samflow.media.reread import Pictures, ReadError

JPEG_QUALITY = 95


def frame_pictures(video: VideoFrames, pictures: Pictures) -> Iterator[tuple[int, np.ndarray]]:
    """(position in ``video.frames``, HxWx3 RGB) of each committed frame; one line of UserError
    when the source video no longer gives them (moved, changed)."""
    by_run: dict[str, dict[int, int]] = {}
    for position, row in enumerate(video.frames):
        by_run.setdefault(row.get("run_id") or "", {})[int(row["frame_index"])] = position
    for run_id, positions in by_run.items():
        try:
            for frame in pictures.frames(video.uri, positions, run_id):
                if frame.rgb.shape[:2] != (video.height, video.width):
                    raise UserError(f"{video.uri}: frame {frame.index} decodes at {frame.rgb.shape[1]}x"
                                    f"{frame.rgb.shape[0]}, the run's tables say {video.width}x{video.height}")
                yield positions[frame.index], frame.rgb
        except ReadError as exc:
            raise UserError(f"cannot read the frames of {video.uri} again: {exc}") from exc


def write_frames(videos: Sequence[VideoFrames], pictures: Pictures,
                 path_of: Callable[[VideoFrames, int], Path]) -> int:
    """Every committed frame of every video as a JPEG at ``path_of(video, position)``; how many."""
    written = 0
    for video in videos:
        for position, rgb in frame_pictures(video, pictures):
            path = path_of(video, position)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(path, "JPEG", quality=JPEG_QUALITY)
            written += 1
    return written
