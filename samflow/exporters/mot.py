"""MOTChallenge text files, one per video: ``frame, id, bb_left, bb_top, bb_width, bb_height,
conf, x, y, z`` per tracked mask. ``frame`` is the source video's frame number, 1-based (the
sampled frames keep their place in the video); ``conf`` is the mask's predicted IoU; x, y, z are
-1 (2-D tracking). Lines are sorted by frame, then id, as the MOT tools expect."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from samflow.exporters.videos import VideoFrames, tracked_videos


def to_mot(images: pa.Table, annotations: pa.Table) -> dict[str, tuple[VideoFrames, str]]:
    """{file name (without .txt): (video, MOT text)} for every committed video."""
    return {video.name: (video, _lines(video)) for video in tracked_videos(images, annotations)}


def _lines(video: VideoFrames) -> str:
    rows: list[tuple[int, int, list[float], float]] = []
    for frame in video.frames:
        for mask in video.masks.get(frame["item_id"], []):
            rows.append((frame["frame_index"] + 1, mask["track_id"], mask["bbox"], _score(mask)))
    rows.sort(key=lambda r: (r[0], r[1]))
    return "".join(
        f"{frame},{track},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{score:.4f},-1,-1,-1\n"
        for frame, track, (x, y, w, h), score in rows
    )


def _score(mask: dict[str, Any]) -> float:
    value = mask.get("predicted_iou")
    return 1.0 if value is None else float(value)
