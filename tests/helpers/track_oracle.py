"""A colour oracle that honours the video-propagation contract, for tracking tests with known
answers (random-weight SAM 2 follows nothing). Frames are flat-colour objects on black: an
object added by mask is "the colour under its mask", and propagation finds that colour in every
later frame (logits +8 on it, -8 elsewhere). Seeds are the colour regions of a frame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from samflow.models.video.tracker import Seed
from samflow.schemas import rle

LOGIT = 8.0


class ColourPropagator:
    def __init__(self) -> None:
        self.session_lengths: list[int] = []  # frames per session: the state bound under test

    def start_session(self, frames: Sequence[np.ndarray]) -> dict:
        self.session_lengths.append(len(frames))
        return {"frames": list(frames), "objects": []}

    def add_masks(self, session: dict, frame_idx: int, obj_ids: Sequence[int], masks: np.ndarray) -> torch.Tensor:
        frame = session["frames"][frame_idx]
        colours = [tuple(int(v) for v in np.median(frame[np.asarray(m, bool)], axis=0)) for m in masks]
        session["objects"] = list(zip([int(i) for i in obj_ids], colours))
        return self._logits(frame, colours)

    def propagate(self, session: dict, start_frame: int | None = None, max_frames: int | None = None,
                  reverse: bool = False):
        ids = [obj_id for obj_id, _ in session["objects"]]
        colours = [colour for _, colour in session["objects"]]
        for idx in range(start_frame or 0, len(session["frames"])):
            yield idx, ids, self._logits(session["frames"][idx], colours)

    @staticmethod
    def _logits(frame: np.ndarray, colours: list[tuple[int, ...]]) -> torch.Tensor:
        if not colours:
            return torch.zeros((0, *frame.shape[:2]))
        same = np.stack([(frame == np.asarray(c, np.uint8)).all(-1) for c in colours])
        return torch.as_tensor(np.where(same, LOGIT, -LOGIT), dtype=torch.float32)


def colour_seeds(frame: np.ndarray) -> list[Seed]:
    """One seed per non-black colour of the frame, as the segment engine would report it."""
    flat = frame.reshape(-1, 3)
    colours = [c for c in np.unique(flat, axis=0) if c.any()]
    seeds = []
    for colour in colours:
        mask = (frame == colour).all(-1)
        record = {"segmentation": rle.encode(mask), "bbox": [0, 0, 1, 1], "area": int(mask.sum()),
                  "predicted_iou": 0.9, "stability_score": 0.95, "point_coords": [], "crop_box": [0, 0, 1, 1],
                  "source": "grid", "proposal_score": None}
        seeds.append(Seed(mask, record))
    return seeds


def scene(t: int, objects: dict[tuple[int, int, int], tuple[int, int, int]], h: int = 48, w: int = 64) -> np.ndarray:
    """A frame with square objects {colour: (x0 at t=0, y0, dx per frame)}, size 10."""
    frame = np.zeros((h, w, 3), np.uint8)
    for colour, (x0, y0, dx) in objects.items():
        x = x0 + dx * t
        frame[y0 : y0 + 10, max(0, x) : max(0, x + 10)] = colour
    return frame
