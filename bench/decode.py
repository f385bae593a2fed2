"""Decode stage throughput on one CPU core: images/s per format, and a mixed directory (good and
bad files) through DecodeStage, reading from local disk.

    python bench/decode.py [--quick]

Prints figures; the last line is the JSON summary, also written to bench/results/decode.json.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, result
from PIL import Image

from samflow.config import InputConfig, StorageConfig
from samflow.media.decode import DecodeStage
from samflow.media.image import decode_image
from samflow.scenes.sample import synthetic_scene
from samflow.store.storage import StorageSource
from tests.helpers.badinputs import write_bad_inputs  # noqa: E402

FORMATS = {"jpeg": ("JPEG", {"quality": 90}), "png": ("PNG", {}), "webp": ("WEBP", {"quality": 90})}


def _photo(height: int, width: int) -> np.ndarray:
    """Photo-like content (a real photograph scaled up), so codecs do realistic work."""
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.coffee()).resize((width, height), Image.Resampling.BICUBIC))


def _encode(pixels: np.ndarray, fmt: str, params: dict) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **params)
    return buffer.getvalue()


def _rate(fn, min_seconds: float) -> float:
    """Calls per second, repeating until at least ``min_seconds`` have passed."""
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        fn()
        calls += 1
    return calls / elapsed


def bench_formats(min_seconds: float) -> list[dict]:
    results = []
    for height, width in ((768, 1024), (1536, 2048)):
        pixels = _photo(height, width)
        for kind, (fmt, params) in FORMATS.items():
            data = _encode(pixels, fmt, params)
            rate = _rate(lambda: decode_image(data, InputConfig().max_pixels), min_seconds)
            case = f"decode_image {kind} {width}x{height}"
            results.append(result(case, "throughput", rate, "images/s"))
            results.append(result(case, "throughput", rate * height * width / 1e6, "Mpixel/s"))
    return results


def bench_stage(n_good: int, min_seconds: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(n_good):
            scene, _, _ = synthetic_scene(rng, 480, 640, n_shapes=5)
            (root / f"scene_{i:04d}.jpg").write_bytes(_encode(scene, "JPEG", {"quality": 90}))
        n_bad = len(write_bad_inputs(root / "bad"))
        files = sorted(p for p in root.rglob("*") if p.is_file())
        batch = {
            "uri": np.array([str(p) for p in files], dtype=object),
            "size": np.array([p.stat().st_size for p in files], dtype=np.int64),
        }
        stage = DecodeStage(StorageSource(StorageConfig()), InputConfig())
        out = stage(batch)
        errors = int((out["error_type"] != "").sum())
        assert errors == n_bad, f"expected {n_bad} error rows, got {errors}"
        rate = _rate(lambda: stage(batch), min_seconds) * len(files)
    case = f"DecodeStage local dir: {n_good} JPEG 640x480 + {n_bad} bad files"
    return [result(case, "throughput", rate, "files/s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (well under two minutes)")
    parser.add_argument("--smoke", action="store_true", help="a few files, tiny windows (seconds)")
    args = parser.parse_args()
    min_seconds = 0.05 if args.smoke else 1.0 if args.quick else 5.0
    files = 8 if args.smoke else 40 if args.quick else 200
    results = bench_formats(min_seconds) + bench_stage(files, min_seconds)
    for row in results:
        print(f"{row['case']:<60} {row['value']:>10.1f} {row['unit']}")
    emit("decode", results)  # one process, one core: decode is single-threaded per worker


if __name__ == "__main__":
    main()
