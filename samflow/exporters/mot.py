"""MOTChallenge sequences, one per video, laid out as MOTChallenge ships them and TrackEval's
``MotChallenge2DBox`` reads them::

    OUT/<seq>/seqinfo.ini        name, imDir, frameRate, seqLength, imWidth, imHeight, imExt
    OUT/<seq>/img1/000001.jpg    the sampled frames, numbered 1.. in video order
    OUT/<seq>/gt/gt.txt          frame, id, bb_left, bb_top, bb_width, bb_height, 1, 1, 1
    OUT/seqmaps/samflow.txt      the sequence list (TrackEval's SEQMAP_FILE)

A line is one tracked mask: ``frame`` numbers the image in ``img1/`` (the k-th sampled frame; the
source frame indices are in ``videos.json``), the box is the mask's COCO box, and the last three
columns mark it considered, of class 1 (the one class MOTChallenge evaluates) and fully visible.
Lines are sorted by frame, then id."""

from __future__ import annotations

from typing import Any

from samflow.exporters.videos import VideoFrames

SEQMAP = "seqmaps/samflow.txt"
IMAGE_DIR = "img1"


def gt_lines(video: VideoFrames) -> str:
    rows: list[tuple[int, int, list[float]]] = []
    for position, frame in enumerate(video.frames, start=1):
        for mask in video.masks.get(frame["item_id"], []):
            rows.append((position, mask["track_id"], mask["bbox"]))
    rows.sort(key=lambda r: (r[0], r[1]))
    return "".join(f"{frame},{track},{x:.2f},{y:.2f},{w:.2f},{h:.2f},1,1,1\n"
                   for frame, track, (x, y, w, h) in rows)


def seqinfo(video: VideoFrames) -> str:
    return (f"[Sequence]\nname={video.name}\nimDir={IMAGE_DIR}\nframeRate={frame_rate(video)}\n"
            f"seqLength={len(video.frames)}\nimWidth={video.width}\nimHeight={video.height}\nimExt=.jpg\n")


def frame_rate(video: VideoFrames) -> int:
    """Sampled frames per second, a whole number as seqinfo.ini wants (at least 1)."""
    times = [f["timestamp_s"] for f in video.frames if f["timestamp_s"] is not None]
    if len(times) < 2 or times[-1] <= times[0]:
        return 1
    return max(1, round((len(times) - 1) / (times[-1] - times[0])))


def image_name(position: int) -> str:
    """The file in ``img1/`` of the frame at ``position`` (0-based) in the video's frames."""
    return f"{position + 1:06d}.jpg"


def seqmap(videos: list[VideoFrames]) -> str:
    return "name\n" + "".join(f"{video.name}\n" for video in videos)


def video_index(videos: list[VideoFrames]) -> dict[str, dict[str, Any]]:
    """Sequence name -> the video behind it and the source frame index of each image."""
    return {video.name: {"uri": video.uri, "width": video.width, "height": video.height,
                         "frames": [f["frame_index"] for f in video.frames],
                         "timestamps_s": [f["timestamp_s"] for f in video.frames]} for video in videos}
