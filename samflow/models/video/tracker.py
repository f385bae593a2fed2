"""Object tracks through a video's sampled frames, chunk by chunk, with state that stays bounded.

A video arrives as chunks of frames, in order. Objects come from seeds (the segment stage's
masks on the first frame and on later re-seed frames); SAM 2 video propagation follows them
through the frames. Every chunk is its own short inference session: the session holds only that
chunk's frames, plus the previous chunk's last frame conditioned on the masks the objects had
there. Between chunks nothing else is carried (one frame and one mask per live object), so
memory does not grow with the video, and SAM 2's per-frame outputs are dropped with the session.

On a re-seed frame the objects being tracked are first propagated onto it, then each seed is
matched to a track by mask IoU (greedy, best pair first, at least ``match_iou``): a matched seed
keeps the track's id and refreshes its mask, an unmatched one starts a new track with a new id.
Ids are stable within the video and never reused.

Labels: a seed may carry a ``label`` and ``label_score`` (SAM 3's concept masks do). A track takes
the label of the seed that started it, or of the first labelled seed matched to it, and keeps it:
a labelled seed is matched only to a track of the same label or to one without a label (so two
concepts on one object stay two tracks, as the concepts stage keeps them), an unlabelled seed to
any track. Every record of a labelled track carries its label and a ``label_score``: the seed's
own score on frames where a seed of that label refreshed it, else the score of the last one.

    tracker = VideoTracker(load_model("auto", "tiny://sam2", task="track"))   # or SAM 3's: tiny://sam3
    for frames, seeds in chunks:                 # seeds: {position in chunk: [Seed, ...]}
        per_frame = tracker.track(frames, seeds)  # per frame: SA-1B records with track_id
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from samflow.schemas import rle

# SAM's stability score: mask at logit +offset over mask at -offset (same as the mask engine).
_STABILITY_OFFSET = 1.0


class VideoPropagator(Protocol):
    """What tracking needs of a video model (``sam2.Sam2VideoRunner``, ``sam3_tracker.Sam3TrackerVideoRunner``)."""

    def start_session(self, frames: Sequence[np.ndarray]) -> Any: ...

    def add_masks(self, session: Any, frame_idx: int, obj_ids: Sequence[int], masks: np.ndarray) -> torch.Tensor: ...

    def propagate(self, session: Any, start_frame: int | None = None, max_frames: int | None = None,
                  reverse: bool = False) -> Iterator[tuple[int, list[int], torch.Tensor]]: ...


@dataclass
class Seed:
    """One object the segment stage found on a seed frame: its mask and its SA-1B record."""

    mask: np.ndarray  # (H, W) bool
    record: dict[str, Any]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Seed:
        return cls(rle.decode(record["segmentation"]), record)


@dataclass
class _Carry:
    """What one chunk hands the next: its last frame and the live objects' masks on it."""

    frame: np.ndarray
    ids: list[int]
    masks: np.ndarray  # (N, H, W) bool


class VideoTracker:
    """Tracks of one video. Feed its chunks in order to :meth:`track`; make a new tracker for the
    next video."""

    def __init__(self, propagator: VideoPropagator, *, match_iou: float = 0.5, max_objects: int = 32):
        self.propagator = propagator
        self.match_iou = match_iou
        self.max_objects = max_objects
        self.next_id = 1
        self.carry: _Carry | None = None
        self.labels: dict[int, str | None] = {}  # track id -> its label (see the module's docstring)
        self.label_scores: dict[int, float | None] = {}  # track id -> its last labelled seed's score

    def track(self, frames: Sequence[np.ndarray], seeds: dict[int, list[Seed]]) -> list[list[dict[str, Any]]]:
        """Per frame of the chunk, the records of the objects on it (each with ``track_id``)."""
        out: list[list[dict[str, Any]]] = [[] for _ in frames]
        starts = sorted({0, *seeds})
        for start, end in zip(starts, [*starts[1:], len(frames)]):
            self._span(frames, start, end, seeds.get(start), out)
        return out

    def reset(self) -> None:
        """Forget the live objects (after a chunk failed): the next seed frame starts afresh;
        ids keep counting, so an old id is never given to a new object."""
        self.carry = None

    # -- one run of frames between seed frames ---------------------------------------------------

    def _span(self, frames: Sequence[np.ndarray], start: int, end: int, seeds: list[Seed] | None,
              out: list[list[dict[str, Any]]]) -> None:
        span = list(frames[start:end])
        if seeds is not None:
            ids, masks, out[start] = self._reseed(span[0], seeds)
            offset, session_frames = 0, span
        elif self.carry is not None and self.carry.ids:
            ids, masks = self.carry.ids, self.carry.masks
            offset, session_frames = 1, [self.carry.frame, *span]  # condition on the carried frame
        else:
            self.carry = None
            return  # nothing is tracked until the next seed frame
        if not ids:
            self.carry = None
            return
        last = (ids, masks)
        if len(session_frames) > 1:
            last = self._propagate(session_frames, ids, masks, offset, start, out)
        self.carry = _Carry(span[-1], *last) if last[0] else None

    def _propagate(self, session_frames: list[np.ndarray], ids: list[int], masks: np.ndarray, offset: int,
                   start: int, out: list[list[dict[str, Any]]]) -> tuple[list[int], np.ndarray]:
        """Propagate ``masks`` from session frame 0 on; fill ``out`` for every later frame and
        return the objects still present on the last one."""
        session = self.propagator.start_session(session_frames)
        self.propagator.add_masks(session, 0, ids, masks)
        final: tuple[list[int], np.ndarray] = ([], masks[:0])
        for idx, obj_ids, logits in self.propagator.propagate(session, start_frame=0):
            if idx == 0:
                continue  # the conditioning frame: its records exist already
            records, present = _records(obj_ids, logits, self._label_of)
            out[start + idx - offset] = records
            if idx == len(session_frames) - 1:
                keep = [i for i, flag in enumerate(present) if flag]
                binary = (logits > 0).cpu().numpy()
                final = ([int(obj_ids[i]) for i in keep], binary[keep])
        return final

    # -- seeds -----------------------------------------------------------------------------------

    def _reseed(self, frame: np.ndarray, seeds: list[Seed]) -> tuple[list[int], np.ndarray, list[dict[str, Any]]]:
        """The objects on a seed frame: tracked objects carried onto it, matched to the seeds by
        mask IoU; unmatched seeds become new tracks. Returns ids, masks and the frame's records."""
        tracked_ids, tracked = self._carried_onto(frame)
        h, w = frame.shape[:2]
        seed_masks = np.stack([s.mask for s in seeds]) if seeds else np.zeros((0, h, w), bool)
        allowed = np.array([[self._may_match(seed, track_id) for track_id in tracked_ids] for seed in seeds],
                           dtype=bool).reshape(len(seeds), len(tracked_ids))
        matches = match_by_iou(seed_masks, tracked, self.match_iou, allowed)
        ids, masks, records = [], [], []

        def add(track_id: int, mask: np.ndarray, record: dict[str, Any]) -> None:
            ids.append(track_id)
            masks.append(mask)
            records.append(record)

        matched_tracks = set(matches.values())
        for t, track_id in enumerate(tracked_ids):  # tracked objects no seed refreshed go on
            if t not in matched_tracks:
                add(track_id, tracked[t], _record(tracked[t], None, track_id, *self._label_of(track_id)))
        for s, t in matches.items():  # a matched seed keeps the track's id, refreshes its mask
            self._relabel(tracked_ids[t], seeds[s])
            add(tracked_ids[t], seeds[s].mask, self._seed_record(seeds[s], tracked_ids[t]))
        for s, seed in enumerate(seeds):  # the rest are new objects, while there is room
            if s not in matches and len(ids) < self.max_objects:
                track_id = self._new_track(seed)
                add(track_id, seed.mask, self._seed_record(seed, track_id))
        stacked = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        return ids, stacked, records

    def _new_track(self, seed: Seed) -> int:
        track_id = self.next_id
        self.next_id += 1
        self.labels[track_id] = None
        self._relabel(track_id, seed)
        return track_id

    # -- labels ----------------------------------------------------------------------------------

    def _may_match(self, seed: Seed, track_id: int) -> bool:
        label = seed.record.get("label")
        return label is None or self.labels.get(track_id) in (None, label)

    def _relabel(self, track_id: int, seed: Seed) -> None:
        """A labelled seed names an unlabelled track, or refreshes the score of its own."""
        label = seed.record.get("label")
        if label is not None and self.labels.get(track_id) in (None, label):
            self.labels[track_id] = label
            self.label_scores[track_id] = seed.record.get("label_score")

    def _label_of(self, track_id: int) -> tuple[str | None, float | None]:
        label = self.labels.get(track_id)
        return label, (self.label_scores.get(track_id) if label is not None else None)

    def _seed_record(self, seed: Seed, track_id: int) -> dict[str, Any]:
        """The seed's record, in its track: the track's label; the seed's own score when it names
        that label, else the track's."""
        label, score = self._label_of(track_id)
        if label is not None and seed.record.get("label") == label:
            score = seed.record.get("label_score")
        return dict(seed.record, track_id=track_id, label=label, label_score=score)

    def _carried_onto(self, frame: np.ndarray) -> tuple[list[int], np.ndarray]:
        """The live objects propagated from the carried frame onto ``frame``."""
        h, w = frame.shape[:2]
        if self.carry is None or not self.carry.ids:
            return [], np.zeros((0, h, w), bool)
        session = self.propagator.start_session([self.carry.frame, frame])
        self.propagator.add_masks(session, 0, self.carry.ids, self.carry.masks)
        for idx, obj_ids, logits in self.propagator.propagate(session, start_frame=0):
            if idx == 1:
                binary = (logits > 0).cpu().numpy()
                keep = [i for i in range(len(obj_ids)) if binary[i].any()]
                return [int(obj_ids[i]) for i in keep], binary[keep]
        return [], np.zeros((0, h, w), bool)


def match_by_iou(seeds: np.ndarray, tracked: np.ndarray, threshold: float,
                 allowed: np.ndarray | None = None) -> dict[int, int]:
    """Greedy one-to-one matching, best IoU first: {seed index: tracked index} for pairs with
    mask IoU >= threshold. ``seeds`` (S, H, W) and ``tracked`` (T, H, W) bool; ``allowed``
    (S, T) bool, if given, rules pairs out (labels that differ)."""
    if len(seeds) == 0 or len(tracked) == 0:
        return {}
    a = torch.as_tensor(seeds.reshape(len(seeds), -1), dtype=torch.float32)
    b = torch.as_tensor(tracked.reshape(len(tracked), -1), dtype=torch.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    if allowed is not None:
        iou = torch.where(torch.as_tensor(allowed), iou, torch.full_like(iou, -1.0))
    matches: dict[int, int] = {}
    used: set[int] = set()
    order = torch.argsort(iou.flatten(), descending=True).tolist()
    for flat in order:
        s, t = divmod(flat, iou.shape[1])
        if float(iou[s, t]) < threshold:
            break
        if s not in matches and t not in used:
            matches[s] = t
            used.add(t)
    return matches


def _records(obj_ids: Sequence[int], logits: torch.Tensor,
             label_of: Callable[[int], tuple[str | None, float | None]]) -> tuple[list[dict[str, Any]], list[bool]]:
    """Records of the objects present (non-empty mask) on one propagated frame."""
    logits = logits.float().cpu()
    binary = (logits > 0).numpy()
    records, present = [], []
    for i, obj_id in enumerate(obj_ids):
        if not binary[i].any():
            present.append(False)
            continue
        present.append(True)
        records.append(_record(binary[i], logits[i], int(obj_id), *label_of(int(obj_id))))
    return records, present


def _record(mask: np.ndarray, logits: torch.Tensor | None, track_id: int, label: str | None,
            label_score: float | None = None) -> dict[str, Any]:
    """An SA-1B record (the segment stage's fields) for a propagated mask. predicted_iou is the
    mask's mean confidence, stability_score SAM's (mask at +1 logit over mask at -1)."""
    segmentation = rle.encode(mask)
    h, w = mask.shape
    score, stability = 1.0, 1.0
    if logits is not None:
        inside = torch.as_tensor(mask)
        score = float(torch.sigmoid(logits[inside]).mean())
        high = int((logits > _STABILITY_OFFSET).sum())
        low = int((logits > -_STABILITY_OFFSET).sum())
        stability = high / low if low else 0.0
    return {
        "segmentation": segmentation,
        "bbox": rle.to_bbox(segmentation),
        "area": int(mask.sum()),
        "predicted_iou": score,
        "stability_score": stability,
        "point_coords": [],
        "crop_box": [0.0, 0.0, float(w), float(h)],
        "source": "track",
        "proposal_score": None,
        "label": label,
        "label_score": label_score,
        "track_id": track_id,
    }
