"""Synthetic scenes with exact instance masks as SA-1B-style tars: training data that needs no
download (benchmarks, tests, a first engine round).

    write_scene_tars(folder, count=40, seed=0, side=(96, 160), per_tar=16)

Each tar pairs ``scene_N.png`` with ``scene_N.json`` (``{"image": {...}, "annotations": [...]}``,
COCO RLE masks with their box and area), the layout ``samflow annotate`` reads with
``input.sa1b_ground_truth: true``. Scenes come from `samflow.scenes.sample.synthetic_scene`.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from samflow.scenes.sample import synthetic_scene


def _annotation(mask: np.ndarray, ann_id: int) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"id": ann_id, "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")},
            "bbox": [float(v) for v in coco_mask.toBbox(rle)], "area": int(coco_mask.area(rle))}


def scene_members(index: int, rng: np.random.Generator, side: tuple[int, int]) -> dict[str, bytes]:
    """One scene as its two tar members (PNG keeps mask edges exact)."""
    height, width = (int(v) for v in rng.integers(side[0], side[1] + 1, size=2))
    image, masks, _ = synthetic_scene(rng, height, width, n_shapes=int(rng.integers(3, 7)))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    sidecar = {"image": {"image_id": index, "file_name": f"scene_{index:05d}.png", "width": width, "height": height},
               "annotations": [_annotation(m, index * 100 + k) for k, m in enumerate(masks)]}
    return {f"scene_{index:05d}.png": buffer.getvalue(), f"scene_{index:05d}.json": json.dumps(sidecar).encode()}


def write_scene_tars(folder: Path, count: int, seed: int = 0, side: tuple[int, int] = (96, 160),
                     per_tar: int = 16, first: int = 0) -> list[Path]:
    """``count`` scenes in tars of ``per_tar`` under ``folder``; returns the tar paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for start in range(0, count, per_tar):
        path = folder / f"scenes_{(first + start) // per_tar:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for index in range(first + start, first + min(start + per_tar, count)):
                for name, data in scene_members(index, rng, side).items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths
