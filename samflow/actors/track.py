"""Track stage: each video, decoded, seeded and tracked in order by one actor, leaves as chunks.

Any actor of a pool may get any batch, so frames of one video spread over actors would lose
their order and the tracker's state. The stage is therefore fused per video: decode passes a
video on as one ``video_pending`` row, and here one actor streams its frames a chunk
(``input.video.chunk_frames``) at a time through the seed engine and the tracker (SAM 2 / 2.1 or
SAM 3's tracker, by the video model's family), yielding each chunk's frame rows when done. The
actor holds one chunk at a time, whatever the video's length.

Frame rows leave with ``masks`` filled (seeds on seed frames, propagated masks elsewhere, each
with its ``track_id``). The last row of a video (a frame, or the error row of a failed last
chunk) carries its ``tracks`` (``tables.TRACK_LIST``) from the stage's own log, for ``tracks/``.

Seeds: the segment engine's grid on the first frame and every ``reseed_s`` seconds. With the
concepts stage on, SAM 3's instances of the vocabulary seed labelled tracks first (a labelled
seed matches only a track of its label) and the grid covers the rest; video rows skip the
concepts stage itself, so it runs here, on seed frames only. Still images pass through; a chunk
that fails becomes ``track`` error rows and the tracker starts over at the next one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from samflow.actors.batch import (
    Batch,
    describe,
    from_arrow,
    mark_error,
    stage_meta,
    to_arrow,
)
from samflow.actors.concepts import ConceptsStage
from samflow.actors.stage import StageConfig, StageContext, context_or_default
from samflow.media.decode import DecodeStage
from samflow.media.image import DecodeError
from samflow.media.video import Frame, VideoError
from samflow.schemas import masks as mask_column
from samflow.schemas.ids import item_id, item_key
from samflow.schemas.tables import TRACK_LIST

if TYPE_CHECKING:
    from samflow.config import RunConfig
    from samflow.models.amg import MaskGenerator
    from samflow.models.video.tracker import Seed, VideoTracker

STAGE = "track"


class TrackConfig(StageConfig):
    """Videos: objects the segment engine finds on the first sampled frame and every
    ``reseed_s`` seconds, followed through the sampled frames by SAM 2 video propagation, in
    chunks of ``input.video.chunk_frames`` (state bounded by one chunk). Each video is decoded,
    seeded and tracked in order by one actor of this pool; still images pass through. With
    ``stages.concepts`` on, SAM 3's instances of ``labels.vocabulary`` on the seed frames seed
    labelled tracks (the grid covers the rest); each track keeps its label."""

    model: str = Field(
        "facebook/sam2.1-hiera-small",
        description="Video model URI; its family picks the tracker: SAM 2 / 2.1 (Sam2VideoModel) or "
        "SAM 3 (facebook/sam3, tiny://sam3: Sam3TrackerVideoModel).",
    )
    batch_size: int = Field(
        8, ge=1, description="Rows per call: images pass straight through, a video row is tracked whole."
    )
    reseed_s: float = Field(
        5.0, gt=0, description="Seconds between seed frames: new objects get new ids, known ones keep theirs."
    )
    match_iou: float = Field(
        0.5, ge=0.0, le=1.0, description="Mask IoU at which a seed is the same object as a track."
    )
    max_objects: int = Field(32, ge=1, description="Objects tracked at once per video (best seeds first).")

    def runs(self, run: RunConfig) -> bool:
        """Videos go to the track stage only with the segment stage on (its engine seeds the
        tracks); otherwise decode samples their frames and they are annotated like images."""
        return self.enabled and run.stages.segment.enabled


class TrackStage:
    """Ray Data callable (``batch_format="numpy"``), a generator: image rows out as they came,
    each ``video_pending`` row out as its frame rows, chunk by chunk."""

    def __init__(self, config: TrackConfig, context: StageContext | None = None, device: str | None = None) -> None:
        """Seeds come from the run's segment model and engine, and from the concepts stage when
        it is on (its labelled masks seed the tracks)."""
        context = context_or_default(context)
        run = context.run
        self.decoder = DecodeStage(context.require_store("the track stage"), run.input, stage_name="decode")
        self.chunk_frames = self.decoder.chunk_rows
        self.params = config
        self.info = {"model": config.model, "checkpoint_sha256": None}
        # The models load with the first video: an image-only run pays for an idle actor only.
        self._load = lambda: self._load_models(config, context, device)
        self.video_model: Any = None
        self.seeder: MaskGenerator | None = None
        self.concepts: ConceptsStage | None = None

    def _load_models(self, config: TrackConfig, context: StageContext, device: str | None) -> None:
        from samflow.models.amg import AmgParams, MaskGenerator
        from samflow.models.loading.cache import with_model_cache
        from samflow.models.loading.registry import load_model

        run = context.run
        # the seeding models go through the model cache and their pins, as their own stages do
        self.video_model = load_model("auto", config.model, task="track", device=device, storage=run.storage,
                                      sha256=config.model_sha256)
        segment = run.stages.segment
        sam = load_model("auto", segment.model, task="segment", device=device, storage=run.storage,
                         sha256=segment.model_sha256)
        self.seeder = MaskGenerator(sam, AmgParams(**run.engine.model_dump()))
        if run.stages.concepts.enabled:
            concepts = run.stages.concepts
            stage = with_model_cache(ConceptsStage, run.storage, concepts.model_sha256)
            self.concepts = stage(concepts, context, device=device)
        self.info = {"model": config.model, "family": self.video_model.family,
                     "checkpoint_sha256": self.video_model.checkpoint_sha256}

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
        if self.video_model is None:
            self._load()
        uri = str(batch["uri"][row])
        data, batch = _inline_video(batch, row)
        from samflow.models.video.tracker import VideoTracker

        run = _VideoRun(VideoTracker(self.video_model, match_iou=self.params.match_iou,
                                     max_objects=self.params.max_objects))
        ready: Batch | None = None  # held back one chunk: the last one carries the tracks
        chunk: list[Frame] = []
        failure: tuple[str, str] | None = None
        try:
            for frame in self.decoder.video_frames(uri, data):
                if chunk and frame.rgb.shape != chunk[-1].rgb.shape:
                    # The picture size changed mid-stream: masks cannot carry over, so the
                    # chunk ends here and the tracker starts again from new seeds.
                    if ready is not None:
                        yield ready
                    ready, chunk = self._chunk(batch, row, run, chunk), []
                    run.restart()
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
        last = self._error(batch, row, "decode", *failure) if failure is not None else ready
        if ready is not None and last is not ready:
            yield ready
        if last is not None:
            # The tracker's own account of every track, on the video's last row whatever it is
            # (a frame, a failed chunk's frame, the decode error): the writer reads it from any row.
            n = len(last["uri"])
            last["tracks"] = pa.array([[]] * (n - 1) + [run.summaries(uri)], type=TRACK_LIST)
            yield last

    def _chunk(self, batch: Batch, row: int, run: _VideoRun, frames: list[Frame]) -> Batch:
        out: Batch = {}
        with stage_meta(out, STAGE, self.info):
            failed: BaseException | None = None
            try:
                seeds = self._seeds(run, frames)
                per_frame = run.tracker.track([f.rgb for f in frames], seeds)
            except Exception as exc:  # noqa: BLE001 - the chunk's frames become error rows
                failed, per_frame = exc, [[] for _ in frames]
                run.restart()
            out.update(_frame_rows(batch, row, frames, per_frame))
            if failed is not None:
                for r in range(len(frames)):
                    mark_error(out, r, STAGE, failed)
            else:
                run.log(frames, per_frame)
        return out

    def _seeds(self, run: _VideoRun, frames: list[Frame]) -> dict[int, list[Seed]]:
        """Segment the chunk's seed frames (the first frame of the video, then one every
        ``reseed_s`` seconds): concept instances first (labelled, best first), then the
        segment stage's engine where they do not lie."""
        from samflow.models.video.tracker import Seed

        due = []
        for position, frame in enumerate(frames):
            if run.seed_due(frame.timestamp_s):
                due.append(position)
                run.next_seed_s = frame.timestamp_s + self.params.reseed_s
        if not due:
            return {}
        images = [frames[p].rgb for p in due]
        named = self._concept_seeds(images)
        covered = [np.logical_or.reduce([s.mask for s in seeds]) if seeds else None for seeds in named]
        found = self.seeder.generate(images, covered=covered)
        return {p: [*concept_seeds, *(Seed.from_record(r) for r in records)]
                for p, concept_seeds, records in zip(due, named, found)}

    def _concept_seeds(self, images: list[np.ndarray]) -> list[list[Seed]]:
        from samflow.models.video.tracker import Seed

        if self.concepts is None:
            return [[] for _ in images]
        return [[Seed.from_record(r) for r in records] for records in self.concepts.find(images)]

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
    label_score_sum: float = 0.0
    label_scores: int = 0


class _VideoRun:
    """Per-video state of the stage: the tracker, when the next seed is due, and each track's
    summary (a few numbers per track, however long the video)."""

    def __init__(self, tracker: VideoTracker):
        self.tracker = tracker
        self.next_seed_s = -math.inf
        self.tracks: dict[int, _TrackLog] = {}

    def restart(self) -> None:
        """Drop the live objects; the next frame is a seed frame (ids keep counting)."""
        self.tracker.reset()
        self.next_seed_s = -math.inf

    def seed_due(self, timestamp_s: float) -> bool:
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
                if record.get("label") is not None and record.get("label_score") is not None:
                    entry.label_score_sum += float(record["label_score"])
                    entry.label_scores += 1

    def summaries(self, uri: str) -> list[dict[str, Any]]:
        """One row per track. ``label``: the track's (its rows carry the same, or none on frames
        before a labelled seed named it); ``score``: for a labelled track the mean of its rows'
        ``label_score`` (SAM 3's confidence in the label), else the mean mask score."""
        return [
            {
                "track_id": track_id, "uri": uri,
                "first_frame": t.first_frame, "last_frame": t.last_frame,
                "first_timestamp_s": _finite(t.first_timestamp_s), "last_timestamp_s": _finite(t.last_timestamp_s),
                "num_frames": t.num_frames,
                "label": self.tracker.labels.get(track_id),
                "score": t.label_score_sum / t.label_scores if t.label_scores else
                (t.score_sum / t.num_frames if t.num_frames else None),
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


def _inline_video(batch: Batch, row: int) -> tuple[bytes | None, Batch]:
    """The encoded video a pending row carries in ``pixels`` (one that came inline, from a tar
    or Parquet), and the batch with those bytes cleared, so no frame row copies them."""
    inline = batch["pixels"][row]
    if inline is None or len(inline) == 0:
        return None, batch
    cleared = np.array(batch["pixels"], dtype=object)
    cleared[row] = b""
    return bytes(inline), {**batch, "pixels": cleared}


def _frame_rows(batch: Batch, row: int, frames: list[Frame], per_frame: list[list[dict[str, Any]]]) -> Batch:
    """One row per frame: the video row's columns, with the frame's own fields and masks."""
    uri = str(batch["uri"][row])
    out = _take(batch, [row] * len(frames))
    source_id = batch.get("source_id")  # a manifest's id keys the video instead of its URI
    key = item_key(uri, "" if source_id is None else str(source_id[row] or ""))
    out["item_id"] = _objects([item_id(key, f.index) for f in frames])
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
