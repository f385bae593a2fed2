"""Track stage: each video, decoded, seeded and tracked in order by one actor, leaves as chunks.

Ray Data hands a stage batches of rows, and any actor of the pool may get any batch: frames of
one video spread over actors would lose their order and the tracker's state. So this stage is
fused per video (decode -> segment on seed frames -> SAM 2 propagation -> rows): the decode
stage passes each video on as one ``video_pending`` row without pixels, and here one actor
streams that video's frames, a chunk of ``input.video.chunk_frames`` at a time, through the
seed engine and the tracker, and yields each chunk's frame rows as soon as they are done. The
actor holds one chunk (plus the one it is about to emit) at any moment, whatever the length;
the graph keeps streaming across videos, because a video is a row like any other until here.

Frame rows leave with the segment stage's column filled (``masks``, through
``samflow.schemas.masks``: the seed records on seed frames, propagated masks elsewhere, each with
its ``track_id``) and every other column copied from the video's row, so later stages (embed) and
the writer see ordinary frames. The last frame row of a video carries its ``tracks``: one summary
per track (``tables.TRACK_LIST``), for ``tracks/``.
Still-image rows pass through untouched. A failure while tracking one chunk turns that chunk's
frames into ``track`` error rows and the tracker starts over at the next chunk (new seeds).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from samflow.actors.batch import Batch, describe, from_arrow, mark_error, stage_meta, to_arrow
from samflow.actors.decode import ByteSource, DecodeError, DecodeStage, InputLimits
from samflow.actors.video import Frame, VideoError
from samflow.models.amg import AmgParams, MaskGenerator
from samflow.models.registry import load_model
from samflow.models.sam2 import load_sam2_video
from samflow.models.tracker import Seed, VideoTracker
from samflow.schemas import masks as mask_column
from samflow.schemas.ids import item_id
from samflow.schemas.tables import TRACK_LIST

STAGE = "track"


@dataclass
class TrackParams:
    """The ``stages.track`` keys the tracking itself uses."""

    reseed_s: float = 5.0
    match_iou: float = 0.5
    max_objects: int = 32


class TrackStage:
    """Ray Data callable (``batch_format="numpy"``), a generator: image rows out as they came,
    each ``video_pending`` row out as its frame rows, chunk by chunk."""

    def __init__(
        self, model_uri: str, segment_model_uri: str, engine: dict[str, Any], source: ByteSource,
        input_cfg: InputLimits, params: dict[str, Any] | None = None, device: str | None = None,
    ) -> None:
        self.video_model = load_sam2_video(model_uri, device=device)
        sam = load_model("sam", segment_model_uri, device=device)
        self.seeder = MaskGenerator(sam, AmgParams(**engine))
        self.decoder = DecodeStage(source, input_cfg, stage_name="decode")
        self.chunk_frames = self.decoder.chunk_rows
        self.params = TrackParams(**(params or {}))
        self.info = {"model": model_uri, "checkpoint_sha256": self.video_model.checkpoint_sha256}

    def __call__(self, batch: Batch | pa.Table) -> Iterator[Batch | pa.Table]:
        # Arrow in, Arrow out in the pipeline (batch_format="pyarrow", like every model stage);
        # a dict of columns in, dicts out (tests, benches). A generator, so it cannot use
        # @arrow_batches: each chunk is converted as it leaves.
        arrow = isinstance(batch, pa.Table)
        columns = from_arrow(batch) if arrow else batch
        for out in self._chunks(columns):
            yield to_arrow(out) if arrow else out

    def _chunks(self, batch: Batch) -> Iterator[Batch]:
        pending = np.asarray(batch.get("video_pending", np.zeros(len(batch["uri"]), bool)), dtype=bool)
        images = np.flatnonzero(~pending).tolist()
        if images or not pending.any():
            out = _take(batch, images)
            with stage_meta(out, STAGE, self.info):
                out["tracks"] = _no_tracks(len(images))
            yield out
        for row in np.flatnonzero(pending).tolist():
            yield from self._video(batch, row)

    # -- one video -------------------------------------------------------------------------------

    def _video(self, batch: Batch, row: int) -> Iterator[Batch]:
        uri = str(batch["uri"][row])
        run = _VideoRun(VideoTracker(self.video_model, match_iou=self.params.match_iou,
                                     max_objects=self.params.max_objects))
        ready: Batch | None = None  # held back one chunk: the last one carries the tracks
        chunk: list[Frame] = []
        failure: tuple[str, str] | None = None
        try:
            for frame in self.decoder.video_frames(uri):
                chunk.append(frame)
                if len(chunk) >= self.chunk_frames:
                    if ready is not None:
                        yield ready
                    ready, chunk = self._chunk(batch, row, run, chunk), []
        except (DecodeError, VideoError) as err:
            failure = (err.error_type, err.message)
        except Exception as exc:  # noqa: BLE001 - one video never fails the batch
            failure = ("internal_error", f"unexpected error while decoding: {describe(exc)}")
        if chunk:
            if ready is not None:
                yield ready
            ready = self._chunk(batch, row, run, chunk)
        if ready is not None:
            n = len(ready["uri"])
            ready["tracks"] = pa.array([[]] * (n - 1) + [run.summaries(uri)], type=TRACK_LIST)
            yield ready
        if failure is not None:
            yield self._error(batch, row, "decode", *failure)

    def _chunk(self, batch: Batch, row: int, run: _VideoRun, frames: list[Frame]) -> Batch:
        out: Batch = {}
        with stage_meta(out, STAGE, self.info):
            failed: BaseException | None = None
            try:
                seeds = self._seeds(run, frames)
                per_frame = run.tracker.track([f.rgb for f in frames], seeds)
            except Exception as exc:  # noqa: BLE001 - the chunk's frames become error rows
                failed, per_frame = exc, [[] for _ in frames]
                run.tracker.reset()
                run.next_seed_s = -math.inf
            out.update(_frame_rows(batch, row, frames, per_frame))
            if failed is not None:
                for r in range(len(frames)):
                    mark_error(out, r, STAGE, failed)
            else:
                run.log(frames, per_frame)
        return out

    def _seeds(self, run: _VideoRun, frames: list[Frame]) -> dict[int, list[Seed]]:
        """Segment the chunk's seed frames (the first frame of the video, then one every
        ``reseed_s`` seconds) with the segment stage's engine."""
        due = []
        for position, frame in enumerate(frames):
            if run.seed_due(frame.timestamp_s, frame.index):
                due.append(position)
                run.next_seed_s = frame.timestamp_s + self.params.reseed_s
        if not due:
            return {}
        found = self.seeder.generate([frames[p].rgb for p in due])
        return {p: [Seed.from_record(r) for r in records] for p, records in zip(due, found)}

    def _error(self, batch: Batch, row: int, stage: str, error_type: str, message: str) -> Batch:
        out: Batch = {}
        with stage_meta(out, STAGE, self.info):
            out.update(_take(batch, [row]))
            out["video_pending"] = np.zeros(1, dtype=bool)
            out["tracks"] = _no_tracks(1)
            for column, value in (("error_stage", stage), ("error_type", error_type), ("error_message", message)):
                out[column] = _objects([value])
        return out


@dataclass
class _TrackLog:
    first_frame: int
    first_timestamp_s: float
    last_frame: int = 0
    last_timestamp_s: float = 0.0
    num_frames: int = 0
    score_sum: float = 0.0
    labels: Counter = field(default_factory=Counter)


class _VideoRun:
    """Per-video state of the stage: the tracker, when the next seed is due, and each track's
    summary (a few numbers per track, however long the video)."""

    def __init__(self, tracker: VideoTracker):
        self.tracker = tracker
        self.next_seed_s = -math.inf
        self.tracks: dict[int, _TrackLog] = {}

    def seed_due(self, timestamp_s: float, index: int) -> bool:
        if self.next_seed_s == -math.inf:
            return True
        return not math.isnan(timestamp_s) and timestamp_s >= self.next_seed_s

    def log(self, frames: list[Frame], per_frame: list[list[dict[str, Any]]]) -> None:
        for frame, records in zip(frames, per_frame):
            for record in records:
                entry = self.tracks.setdefault(record["track_id"], _TrackLog(frame.index, frame.timestamp_s))
                entry.last_frame, entry.last_timestamp_s = frame.index, frame.timestamp_s
                entry.num_frames += 1
                entry.score_sum += float(record.get("predicted_iou") or 0.0)
                if record.get("label"):
                    entry.labels[record["label"]] += 1

    def summaries(self, uri: str) -> list[dict[str, Any]]:
        return [
            {
                "track_id": track_id, "uri": uri,
                "first_frame": t.first_frame, "last_frame": t.last_frame,
                "first_timestamp_s": _finite(t.first_timestamp_s), "last_timestamp_s": _finite(t.last_timestamp_s),
                "num_frames": t.num_frames,
                "label": t.labels.most_common(1)[0][0] if t.labels else self.tracker.labels.get(track_id),
                "score": t.score_sum / t.num_frames if t.num_frames else None,
            }
            for track_id, t in sorted(self.tracks.items())
        ]


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _no_tracks(rows: int) -> pa.ListArray:
    return pa.array([[]] * rows, type=TRACK_LIST)


def _objects(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _take(batch: Batch, rows: list[int]) -> Batch:
    """The given rows of every column (numpy columns stay numpy, Arrow columns stay Arrow)."""
    index = np.asarray(rows, dtype=np.int64)
    return {
        name: column.take(pa.array(index)) if isinstance(column, (pa.Array, pa.ChunkedArray))
        else np.asarray(column)[index]
        for name, column in batch.items()
    }


def _frame_rows(batch: Batch, row: int, frames: list[Frame], per_frame: list[list[dict[str, Any]]]) -> Batch:
    """One row per frame: the video row's columns, with the frame's own fields and masks."""
    uri = str(batch["uri"][row])
    out = _take(batch, [row] * len(frames))
    out["item_id"] = _objects([item_id(uri, f.index) for f in frames])
    out["frame_index"] = np.array([f.index for f in frames], dtype=np.int32)
    out["timestamp_s"] = np.array([f.timestamp_s for f in frames], dtype=np.float64)
    out["height"] = np.array([f.rgb.shape[0] for f in frames], dtype=np.int32)
    out["width"] = np.array([f.rgb.shape[1] for f in frames], dtype=np.int32)
    out["pixels"] = _objects([f.rgb.tobytes() for f in frames])
    out["video_pending"] = np.zeros(len(frames), dtype=bool)
    # the frames' masks replace the video row's (empty) list, in its place in the column order
    out[mask_column.COLUMN] = mask_column.from_records(per_frame)
    out["tracks"] = _no_tracks(len(frames))
    for column in ("error_stage", "error_type", "error_message"):
        out[column] = _objects([""] * len(frames))
    return out
