"""A numpy batch as decode hands it to the model stages, for calling a stage directly in tests."""

from __future__ import annotations

import numpy as np

from samflow.actors.batch import object_column


def image_batch(images: list[np.ndarray], failed: tuple[int, ...] = (), factor: int = 1) -> dict[str, np.ndarray]:
    """Rows for ``images`` (already upscaled by ``factor``); rows in ``failed`` carry a decode error."""
    n = len(images)
    batch = {
        "uri": object_column([f"mem://{i}.png" for i in range(n)]),
        "item_id": object_column([f"item{i}" for i in range(n)]),
        "width": np.array([im.shape[1] // factor for im in images], dtype=np.int32),
        "height": np.array([im.shape[0] // factor for im in images], dtype=np.int32),
        "pixels": object_column([im.tobytes() for im in images]),
        "error_stage": object_column(["decode" if i in failed else "" for i in range(n)]),
        "error_type": object_column(["corrupt" if i in failed else "" for i in range(n)]),
        "error_message": object_column(["boom" if i in failed else "" for i in range(n)]),
    }
    if factor != 1:
        batch["upscale_factor"] = np.full(n, float(factor))
    return batch
