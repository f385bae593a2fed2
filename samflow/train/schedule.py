"""The learning rate over a run: a linear warm-up, then constant or a cosine decay to zero.

Progress is the larger of two shares: steps done of the planned steps (epochs x the train
split's steps per worker) and, under ``max_minutes``, training time spent of the budget, so a
time-boxed run anneals within its budget instead of being cut off at its peak rate. Workers
agree on the share (the largest of theirs) so DDP replicas keep identical weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Shape = Literal["constant", "cosine"]


@dataclass(frozen=True)
class LrSchedule:
    base: float
    shape: Shape = "cosine"
    warmup_steps: int = 0
    total_steps: int = 0  # planned steps per worker; 0: unknown (only the time budget counts)

    def progress(self, steps_done: int, seconds_spent: float, max_seconds: float | None) -> float:
        """The run's share done, in [0, 1]."""
        shares = [steps_done / self.total_steps] if self.total_steps else []
        if max_seconds:
            shares.append(seconds_spent / max_seconds)
        return min(1.0, max(shares, default=0.0))

    def rate(self, steps_done: int, progress: float) -> float:
        """The learning rate of the next step."""
        warm = min(1.0, (steps_done + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.shape == "constant":
            return self.base * warm
        return self.base * warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def planned_steps(train_items: int, batch_size: int, workers: int, epochs: int) -> int:
    """Steps each worker takes over ``epochs`` (the split shared evenly, the last batch partial)."""
    per_worker = math.ceil(train_items / max(1, workers))
    return epochs * math.ceil(per_worker / max(1, batch_size))
