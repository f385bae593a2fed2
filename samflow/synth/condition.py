"""Masks -> the condition a segmentation ControlNet reads: an RGB map, each mask painted in its
ADE20K class colour (by its label) or, without a known label, in an instance colour.

Larger masks are painted first, so a part (a wheel) stays visible on its whole (a car); pixels
no mask covers are black. The generated image's size keeps the source's aspect ratio, its
shorter side ``short_side`` (the longer at most ``max_side``), both sides rounded to the model's
size multiple; masks are resized to it by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from samflow.synth.palette import BACKGROUND, class_colour, class_index, instance_colours


def output_size(height: int, width: int, short_side: int, max_side: int, multiple: int) -> tuple[int, int]:
    """(height, width) of the generated image for a ``height`` x ``width`` source."""
    scale = short_side / min(height, width)
    scale = min(scale, max_side / max(height, width))

    def snap(side: float) -> int:
        return max(multiple, round(side / multiple) * multiple)

    return snap(height * scale), snap(width * scale)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to (height, width) by nearest neighbour (unchanged at its size)."""
    if mask.shape == tuple(size):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.NEAREST)) > 127


def mask_colours(labels: Sequence[str | None]) -> list[tuple[int, int, int]]:
    """One colour per mask: its label's ADE20K class colour, else the next instance colour that
    no labelled mask of the image uses."""
    classes = [class_index(label) for label in labels]
    taken = {class_colour(c) for c in classes if c is not None}
    free = iter([colour for colour in instance_colours() if colour not in taken])
    colours = []
    for index in classes:
        if index is not None:
            colours.append(class_colour(index))
        else:
            # more unlabelled masks than colours: the cycle starts again
            colour = next(free, None)
            if colour is None:
                free = iter([colour for colour in instance_colours() if colour not in taken])
                colour = next(free)
            colours.append(colour)
    return colours


def render(masks: Sequence[np.ndarray], labels: Sequence[str | None], size: tuple[int, int]) -> np.ndarray:
    """The (height, width, 3) uint8 condition map of ``masks`` (boolean, each ``size``)."""
    condition = np.empty((*size, 3), dtype=np.uint8)
    condition[:] = BACKGROUND
    colours = mask_colours(labels)
    areas = [int(mask.sum()) for mask in masks]
    for index in sorted(range(len(masks)), key=lambda i: -areas[i]):  # stable: ties keep their order
        condition[masks[index]] = colours[index]
    return condition
