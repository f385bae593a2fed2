"""Track-stage test helpers: a decoded batch of pending videos, and the tracks/annotations agreement check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from samflow.schemas import masks as mask_column


def pending_batch(paths: list[Path], still: Path) -> dict[str, np.ndarray]:
    from samflow.config import InputConfig, StorageConfig
    from samflow.media.decode import DecodeStage
    from samflow.store.storage import StorageSource

    files = [*paths, still]
    decode = DecodeStage(StorageSource(StorageConfig()), InputConfig(), defer_videos=True)
    batch = decode({"uri": np.array([str(p) for p in files], dtype=object),
                    "size": np.array([p.stat().st_size for p in files])})
    batch["masks"] = mask_column.empty(len(files))  # as the segment stage leaves them
    return batch


def concat(parts: list):
    import pyarrow as pa

    if isinstance(parts[0], pa.Array):
        return pa.concat_arrays(parts)
    return np.concatenate(parts)


def assert_tracks_agree(tracks, annotations, images) -> None:
    """Each track row says what the annotation rows with its id say (frames, times, count)."""
    frame_of = dict(zip(images["item_id"].to_pylist(), images["frame_index"].to_pylist()))
    time_of = dict(zip(images["item_id"].to_pylist(), images["timestamp_s"].to_pylist()))
    by_track: dict[int, list[str]] = {}
    for item, track_id in zip(annotations["item_id"].to_pylist(), annotations["track_id"].to_pylist()):
        by_track.setdefault(track_id, []).append(item)
    assert sorted(tracks["track_id"].to_pylist()) == sorted(by_track)
    for row in tracks.to_pylist():
        items = by_track[row["track_id"]]
        frames = sorted(frame_of[i] for i in items)
        assert (row["first_frame"], row["last_frame"], row["num_frames"]) == (frames[0], frames[-1], len(items))
        assert row["first_timestamp_s"] == pytest.approx(min(time_of[i] for i in items))
        assert row["last_timestamp_s"] == pytest.approx(max(time_of[i] for i in items))
        assert len(set(items)) == len(items)  # one mask per track per frame


