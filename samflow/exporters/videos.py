"""What the video exporters share: the committed frames of each video, in order, and the tracked
masks on them (annotations with a ``track_id``, joined to their frame)."""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

UNLABELLED = "object"


@dataclass
class VideoFrames:
    """One video's committed sampled frames, in frame order, and its tracked masks by frame."""

    uri: str
    width: int
    height: int
    frames: list[dict[str, Any]] = field(default_factory=list)  # images rows, by frame_index
    masks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # item_id -> annotation rows

    @property
    def name(self) -> str:
        """A file-name-safe, collision-free name: the file's stem and a hash of its URI."""
        stem = posixpath.splitext(posixpath.basename(self.uri.rstrip("/")))[0] or "video"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
        return f"{safe}-{hashlib.sha1(self.uri.encode()).hexdigest()[:8]}"


_ANNOTATION_COLUMNS = ["item_id", "segmentation", "bbox", "area", "predicted_iou", "label", "track_id"]


def tracked_videos(images: pa.Table, annotations: pa.Table) -> list[VideoFrames]:
    """The videos among ``images`` (rows with a timestamp), sorted by URI, with their frames in
    order and the annotations that carry a track id."""
    frames = images.filter(pc.invert(pc.is_null(images["timestamp_s"])))
    videos: dict[str, VideoFrames] = {}
    for row in sorted(frames.to_pylist(), key=lambda r: (r["uri"], r["frame_index"])):
        video = videos.setdefault(row["uri"], VideoFrames(row["uri"], row["width"], row["height"]))
        video.frames.append(row)
    by_item = {row["item_id"]: video for video in videos.values() for row in video.frames}
    tracked = annotations.select(_ANNOTATION_COLUMNS).filter(pc.invert(pc.is_null(annotations["track_id"])))
    for row in tracked.to_pylist():
        video = by_item.get(row["item_id"])
        if video is not None:
            video.masks.setdefault(row["item_id"], []).append(row)
    return [videos[uri] for uri in sorted(videos)]
