"""An SA-1B-style source for synth tests: tars of small images whose sidecars hold known masks."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask


def shapes(height: int, width: int, seed: int) -> list[np.ndarray]:
    """Three overlapping masks: a large rectangle, a disc partly on it, a small square."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    big = np.zeros((height, width), bool)
    top, left = rng.integers(2, 8, size=2)
    big[top : top + height // 2, left : left + width // 2] = True
    cy, cx, r = height * 0.6, width * 0.55, min(height, width) / 5
    disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
    small = np.zeros((height, width), bool)
    small[height - 14 : height - 4, 4:14] = True
    return [big, disc, small]


def sidecar(name: str, masks: list[np.ndarray]) -> dict:
    height, width = masks[0].shape
    annotations = []
    for index, mask in enumerate(masks):
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({"id": 100 + index, "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                            "area": int(coco_mask.area(rle)), "bbox": [float(v) for v in coco_mask.toBbox(rle)]})
    return {"image": {"image_id": 1, "file_name": f"{name}.jpg", "height": height, "width": width},
            "annotations": annotations}


def write_tar(path: Path, images: dict[str, tuple[int, int, int]]) -> dict[str, dict]:
    """``images``: sample name -> (height, width, seed). Returns the sidecars by sample name."""
    sidecars = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (height, width, seed) in images.items():
            pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
            encoded = io.BytesIO()
            Image.fromarray(pixels).save(encoded, format="JPEG")
            sidecars[name] = sidecar(name, shapes(height, width, seed))
            for member, data in ((f"{name}.jpg", encoded.getvalue()), (f"{name}.json", json.dumps(sidecars[name]).encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return sidecars


def read_tars(paths: list[Path] | list[bytes]) -> dict[str, dict]:
    """Members of SYN's tars: sample name -> {"jpg": bytes, "json": dict}."""
    samples: dict[str, dict] = {}
    for source in paths:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                name, _, suffix = member.name.partition(".")
                content = tar.extractfile(member).read()
                samples.setdefault(name, {})[suffix] = json.loads(content) if suffix == "json" else content
    return samples
