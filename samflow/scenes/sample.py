"""A small dataset that needs no download: synthetic scenes with known masks, plus images that
scikit-image ships inside its wheel.

    python -m samflow.scenes.sample DIR [--synthetic N] [--seed S]

Synthetic scenes are coloured shapes (discs, boxes, ellipses, triangles) over a textured
background; the visible part of each shape is its ground-truth instance mask, saved beside the
images as ``_gt/<image name>.masks.npz`` (the default exclude glob ``**/_*`` keeps it out of
the run). Everything is deterministic in ``seed``.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import draw

GT_DIR = "_gt"
MAX_SIDE = 512
MIN_VISIBLE_FRACTION = 0.3  # a shape mostly hidden by later ones is erased from the scene
MIN_CONTRAST = 80.0  # RGB distance between a shape and the mean of what it is painted over

# (skimage.data function, file format): all of these are files inside the scikit-image wheel.
SKIMAGE_IMAGES: tuple[tuple[str, str], ...] = (
    ("astronaut", "JPEG"),
    ("coffee", "JPEG"),
    ("chelsea", "JPEG"),
    ("rocket", "JPEG"),
    ("immunohistochemistry", "PNG"),
    ("camera", "PNG"),
    ("coins", "PNG"),
)


# --- synthetic scenes --------------------------------------------------------------------------


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A two-colour gradient with stripes and fine grain: texture without object-like blobs."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(40, 215, size=(2, 3))
    t = (yy / max(height - 1, 1))[:, :, None]
    image = top * (1 - t) + bottom * t
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 18)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    image += 12 * stripes[:, :, None] + rng.normal(0, 6, size=(height, width, 1))
    return image


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray | None) -> np.ndarray:
    """A random colour far enough from what it covers that the object has a visible edge."""
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if under is None or np.linalg.norm(colour - under) >= MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, size=3)
    return colour


def _disc(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    r = rng.uniform(0.08, 0.2) * min(height, width)
    cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
    return _mask(height, width, draw.disk((cy, cx), r, shape=(height, width)))


def _box(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    h, w = rng.uniform(0.15, 0.4) * height, rng.uniform(0.15, 0.4) * width
    y0, x0 = rng.uniform(0, height - h), rng.uniform(0, width - w)
    start, end = (int(np.ceil(y0)), int(np.ceil(x0))), (int(np.ceil(y0 + h)) - 1, int(np.ceil(x0 + w)) - 1)
    return _mask(height, width, draw.rectangle(start, end=end, shape=(height, width)))


def _ellipse(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    a, b = rng.uniform(0.1, 0.25) * width, rng.uniform(0.05, 0.15) * height
    cy, cx = rng.uniform(b + a * 0.5, height - b - a * 0.5), rng.uniform(a, width - a)
    theta = rng.uniform(0, np.pi)
    # skimage's rotation turns the row axis towards the column axis: the opposite sense of theta
    return _mask(height, width, draw.ellipse(cy, cx, b, a, shape=(height, width), rotation=-theta))


def _triangle(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    size = rng.uniform(0.2, 0.4) * min(height, width)
    cy, cx = rng.uniform(size, height - size / 2), rng.uniform(size, width - size)
    turn = rng.uniform(0, 2 * np.pi)
    angles = np.array([turn + k * 2 * np.pi / 3 for k in range(3)])
    rows, cols = cy + size * np.sin(angles), cx + size * np.cos(angles)
    return _mask(height, width, draw.polygon(rows, cols, shape=(height, width)))


def _mask(height: int, width: int, pixels: tuple[np.ndarray, ...]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[pixels[0], pixels[1]] = True
    return mask


SHAPES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "disc": _disc,
    "box": _box,
    "ellipse": _ellipse,
    "triangle": _triangle,
}


def synthetic_scene(
    rng: np.random.Generator, height: int, width: int, n_shapes: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(HxWx3 uint8 image, NxHxW bool visible masks, N shape names), painted back to front."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = _background(rng, height, width)
    image = background.copy()
    owner = np.full((height, width), -1, dtype=np.int32)
    names = [str(n) for n in rng.choice(sorted(SHAPES), size=n_shapes)]
    full_areas = []
    for index, name in enumerate(names):
        inside = SHAPES[name](rng, height, width)
        full_areas.append(int(inside.sum()))
        colour = _contrasting_colour(rng, image[inside].mean(axis=0) if inside.any() else None)
        shading = 1.0 + 0.15 * (xx - xx.mean()) / width  # a soft light gradient across objects
        noise = rng.normal(0, 3, size=(full_areas[-1], 3))
        image[inside] = colour * shading[inside][:, None] + noise
        owner[inside] = index
    masks, kept = [], []
    for index, name in enumerate(names):
        visible = owner == index
        area = int(visible.sum())
        if area >= 64 and area >= MIN_VISIBLE_FRACTION * max(full_areas[index], 1):
            masks.append(visible)
            kept.append(name)
        else:
            # A mostly hidden shape is erased, so every object in the picture is in the truth.
            image[visible] = background[visible]
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), stacked, kept


def gt_path(image_path: Path) -> Path:
    """Where the ground-truth masks of a sample image live."""
    return image_path.parent / GT_DIR / f"{image_path.name}.masks.npz"


def load_gt(image_path: Path) -> tuple[np.ndarray, list[str]]:
    """(NxHxW bool masks, N shape names) of a synthetic sample image."""
    with np.load(gt_path(image_path)) as saved:
        return saved["masks"], [str(n) for n in saved["labels"]]


def _save(image: Image.Image, path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    path.write_bytes(buffer.getvalue())


def _write_synthetic(dst_dir: Path, index: int, rng: np.random.Generator) -> Path:
    height, width = int(rng.integers(192, 385)), int(rng.integers(256, 513))
    image, masks, labels = synthetic_scene(rng, height, width, n_shapes=int(rng.integers(3, 7)))
    # Lossless PNG keeps mask edges exact; every other scene is JPEG, like most real datasets.
    fmt, ext = ("PNG", "png") if index % 2 == 0 else ("JPEG", "jpg")
    path = dst_dir / f"scene_{index:03d}.{ext}"
    _save(Image.fromarray(image), path, fmt)
    gt = gt_path(path)
    gt.parent.mkdir(parents=True, exist_ok=True)
    boxes = np.array([_xywh(m) for m in masks], dtype=np.float32).reshape(-1, 4)
    np.savez_compressed(gt, masks=masks, labels=np.array(labels, dtype=str), boxes_xywh=boxes)
    return path


def _xywh(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


# --- scikit-image data -------------------------------------------------------------------------


def _fit(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _write_skimage(dst_dir: Path, name: str, fmt: str) -> Path:
    import skimage.data

    pixels = getattr(skimage.data, name)()
    image = _fit(Image.fromarray(pixels))
    path = dst_dir / f"skimage_{name}.{'jpg' if fmt == 'JPEG' else 'png'}"
    _save(image, path, fmt)
    return path


def write_sample_dataset(
    dst_dir: Path, n_synthetic: int = 8, seed: int = 0, include_skimage: bool = True
) -> list[Path]:
    """Write the sample dataset into ``dst_dir``; returns the image paths (masks not included).

    ``include_skimage=False`` writes only the synthetic scenes (e.g. to add fresh items to a
    dataset that already holds the scikit-image pictures).
    """
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [_write_synthetic(dst_dir, i, rng) for i in range(n_synthetic)]
    if include_skimage:
        paths += [_write_skimage(dst_dir, name, fmt) for name, fmt in SKIMAGE_IMAGES]
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dst", type=Path, help="folder to write the images into")
    parser.add_argument("--synthetic", type=int, default=8, help="number of synthetic scenes (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the scenes (default 0)")
    parser.add_argument("--no-skimage", action="store_true", help="synthetic scenes only")
    args = parser.parse_args(argv)
    paths = write_sample_dataset(
        args.dst, n_synthetic=args.synthetic, seed=args.seed, include_skimage=not args.no_skimage
    )
    print(f"wrote {len(paths)} images to {args.dst} (ground-truth masks under {args.dst / GT_DIR})")


if __name__ == "__main__":
    main()
