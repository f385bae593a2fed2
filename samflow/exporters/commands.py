"""``samflow export coco|review|mot|ytvis DST OUT``: committed tables -> other tools' formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from samflow.config import StorageConfig
from samflow.exporters.coco import to_coco
from samflow.exporters.frames import write_frames
from samflow.exporters.semi import SemiParams
from samflow.exporters.videos import VideoFrames, tracked_videos
from samflow.media.reread import Pictures
from samflow.schemas import tables
from samflow.store.catalog import Catalog
from samflow.store.runs import input_sections
from samflow.store.storage import StorageSource


def export_coco(dst: str, out: Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    catalog = Catalog(dst, storage or StorageConfig())
    images, annotations = committed_tables(catalog, dst)
    coco = to_coco(images, annotations, vocabulary=run_vocabulary(catalog))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    return {"out": str(out), "images": len(coco["images"]), "annotations": len(coco["annotations"])}


def export_review(
    dst: str, out: Path, min_score: float = 0.5, sources: list[str] | None = None,
    storage: StorageConfig | None = None, semi: SemiParams | None = None,
) -> dict[str, Any]:
    """Label Studio tasks for the masks to review (OUT.json) and their labeling config (OUT.xml).
    With ``semi``: the semi-automatic stage's tasks (samflow.exporters.semi)."""
    from samflow.exporters.review import to_label_studio
    from samflow.exporters.semi import semi_tasks

    images, annotations = committed_tables(Catalog(dst, storage or StorageConfig()), dst)
    if semi is not None:
        tasks, config, counts = semi_tasks(images, _with_columns(annotations), semi)
    else:
        tasks, config = to_label_studio(images, _with_columns(annotations), min_score=min_score,
                                        sources=sources or ["concept"])
        counts = {"tasks": len(tasks), "masks": sum(len(task["predictions"][0]["result"]) for task in tasks)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks))
    config_path = out.with_suffix(".xml")
    config_path.write_text(config)
    return {"out": str(out), "label_config": str(config_path), **counts}


def _with_columns(annotations):
    """Tables written before a column existed read without it: add it as nulls."""
    for field in tables.ANNOTATIONS:
        if field.name not in annotations.column_names:
            annotations = annotations.append_column(field, pa.nulls(annotations.num_rows, field.type))
    return annotations


def run_vocabulary(catalog: Catalog) -> list[str]:
    """labels.vocabulary of every run into DST, oldest run first, each label once."""
    labels: list[str] = []
    for manifest in catalog.run_manifests():
        labels += manifest.get("config", {}).get("labels", {}).get("vocabulary", [])
    return list(dict.fromkeys(labels))


class NothingToExport(Exception):
    """DST holds no committed rows the export needs (a user mistake: wrong path, no run yet)."""


def committed_tables(catalog: Catalog, dst: str) -> tuple[pa.Table, pa.Table]:
    """The committed images and annotations of DST (annotations may be empty); a DST without
    images is the user's mistake (wrong path, no run yet)."""
    images = catalog.read_table("images")
    if images is None:
        raise NothingToExport(f"no committed images under {dst}")
    annotations = catalog.read_table("annotations")
    if annotations is None:
        annotations = tables.ANNOTATIONS.empty_table()
    return images, annotations


def _videos(dst: str, storage: StorageConfig) -> list[VideoFrames]:
    videos = tracked_videos(*committed_tables(Catalog(dst, storage), dst))
    if not videos:
        raise NothingToExport(f"no committed video frames under {dst}")
    return videos


def _pictures(dst: str, storage: StorageConfig) -> Pictures:
    """The run's source pictures, decoded again as each run decoded them."""
    return Pictures(StorageSource(storage), input_sections(dst, storage))


def export_mot(dst: str, out_dir: Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    """``samflow export mot DST OUT_DIR``: a MOTChallenge sequence per committed video (frames,
    ``seqinfo.ini``, ``gt/gt.txt``; see ``samflow.exporters.mot``), the sequence map, and
    ``videos.json`` naming the video (URI, size, source frames) behind each sequence."""
    from samflow.exporters import mot

    storage = storage or StorageConfig()
    videos = _videos(dst, storage)
    lines = 0
    for video in videos:
        folder = out_dir / video.name
        (folder / "gt").mkdir(parents=True, exist_ok=True)
        text = mot.gt_lines(video)
        (folder / "gt" / "gt.txt").write_text(text)
        (folder / "seqinfo.ini").write_text(mot.seqinfo(video))
        lines += text.count("\n")
    frames = write_frames(videos, _pictures(dst, storage),
                          lambda video, position: out_dir / video.name / mot.IMAGE_DIR / mot.image_name(position))
    (out_dir / mot.SEQMAP).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / mot.SEQMAP).write_text(mot.seqmap(videos))
    (out_dir / "videos.json").write_text(json.dumps(mot.video_index(videos), indent=1))
    return {"out": str(out_dir), "videos": len(videos), "frames": frames, "boxes": lines}


def export_ytvis(dst: str, out: Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    """``samflow export ytvis DST OUT.json``: YouTube-VIS JSON of the committed videos, and their
    frames where its ``file_names`` point: ``JPEGImages/<video>/<frame>.jpg`` beside OUT.json."""
    from samflow.exporters.ytvis import IMAGE_DIR, to_ytvis

    storage = storage or StorageConfig()
    videos = _videos(dst, storage)
    data = to_ytvis(videos)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = {video_ann["id"]: video_ann["file_names"] for video_ann in data["videos"]}
    ids = {video.uri: video_id for video_id, video in enumerate(videos, start=1)}
    frames = write_frames(videos, _pictures(dst, storage),
                          lambda video, position: out.parent / IMAGE_DIR / names[ids[video.uri]][position])
    out.write_text(json.dumps(data))
    return {"out": str(out), "images": str(out.parent / IMAGE_DIR), "videos": len(videos), "frames": frames,
            "tracks": len(data["annotations"])}
