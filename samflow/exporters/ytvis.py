"""YouTube-VIS JSON: ``videos`` (one per video: size, length, one file name per sampled frame,
``<video>/<source frame index>.jpg`` under ``JPEGImages/`` beside the JSON),
``categories`` (from the labels; unlabelled masks are "object"), and ``annotations``, one per
track with one entry per frame of its video in ``segmentations`` (COCO RLE, compressed counts),
``bboxes`` and ``areas``: null on frames where the track has no mask. Tracks come from the
annotation rows' ``track_id``; a track's category is its most frequent label, its ``score``
the mean predicted IoU of its masks. samflow ids ride along (``samflow_uri``,
``samflow_track_id``, ``frame_indices``, ``timestamps_s``) so rows can be joined back."""

from __future__ import annotations

from collections import Counter
from typing import Any

from samflow.exporters.videos import UNLABELLED, VideoFrames

IMAGE_DIR = "JPEGImages"


def to_ytvis(videos: list[VideoFrames]) -> dict[str, Any]:
    labels = sorted({m["label"] for v in videos for ms in v.masks.values() for m in ms if m["label"]} - {UNLABELLED})
    category_ids = {name: i + 1 for i, name in enumerate([UNLABELLED, *labels])}
    out_videos, out_annotations = [], []
    for video_id, video in enumerate(videos, start=1):
        out_videos.append(_video(video_id, video))
        for track_id, per_frame in sorted(_tracks(video).items()):
            out_annotations.append(_annotation(len(out_annotations) + 1, video_id, video, track_id, per_frame, category_ids))
    return {
        "info": {"description": "samflow video annotations", "version": "1.0"},
        "videos": out_videos,
        "categories": [{"id": i, "name": name, "supercategory": "object"} for name, i in category_ids.items()],
        "annotations": out_annotations,
    }


def _video(video_id: int, video: VideoFrames) -> dict[str, Any]:
    return {
        "id": video_id,
        "width": video.width,
        "height": video.height,
        "length": len(video.frames),
        "file_names": [f"{video.name}/{f['frame_index']:06d}.jpg" for f in video.frames],
        "frame_indices": [f["frame_index"] for f in video.frames],
        "timestamps_s": [f["timestamp_s"] for f in video.frames],
        "samflow_uri": video.uri,
    }


def _tracks(video: VideoFrames) -> dict[int, dict[int, dict[str, Any]]]:
    """track id -> {position of the frame in the video: its mask row}."""
    tracks: dict[int, dict[int, dict[str, Any]]] = {}
    for position, frame in enumerate(video.frames):
        for mask in video.masks.get(frame["item_id"], []):
            tracks.setdefault(mask["track_id"], {})[position] = mask
    return tracks


def _annotation(
    ann_id: int, video_id: int, video: VideoFrames, track_id: int, per_frame: dict[int, dict[str, Any]],
    category_ids: dict[str, int],
) -> dict[str, Any]:
    n = len(video.frames)
    masks = [per_frame.get(i) for i in range(n)]
    label = Counter(m["label"] for m in per_frame.values() if m["label"]).most_common(1)
    scores = [float(m["predicted_iou"]) for m in per_frame.values() if m["predicted_iou"] is not None]
    return {
        "id": ann_id,
        "video_id": video_id,
        "category_id": category_ids[label[0][0]] if label else category_ids[UNLABELLED],
        "iscrowd": 0,
        "width": video.width,
        "height": video.height,
        "length": n,
        "segmentations": [None if m is None else {"size": list(m["segmentation"]["size"]),
                                                  "counts": m["segmentation"]["counts"]} for m in masks],
        "bboxes": [None if m is None else [float(v) for v in m["bbox"]] for m in masks],
        "areas": [None if m is None else int(m["area"]) for m in masks],
        "score": sum(scores) / len(scores) if scores else None,
        "samflow_track_id": track_id,
    }
