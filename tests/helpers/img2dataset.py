"""Small datasets laid out as img2dataset writes its three output formats, and as a Hugging Face
dataset repository holds Parquet (for input detection tests).

img2dataset (rom1504/img2dataset, writer.py and logger.py): shards are named by a zero-padded
shard id (``00000``); each sample's key is the shard id followed by its zero-padded index in the
shard (``000000003``). Every format writes ``<shard>_stats.json`` (counts and a status table);
``files`` writes ``<shard>/<key>.jpg`` with ``<key>.txt`` (caption) and ``<key>.json`` (the
sample's metadata) beside it, plus ``<shard>.parquet`` holding every sample's metadata, failed
downloads included; ``webdataset`` writes ``<shard>.tar`` (members ``<key>.jpg``, ``.txt``,
``.json``) plus the same ``<shard>.parquet``; ``parquet`` writes ``<shard>.parquet`` alone, the
metadata columns plus ``jpg`` (the image bytes, null for a failed download) and ``txt``.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SHARD_DIGITS = 5  # img2dataset's oom_shard_count default
SAMPLE_DIGITS = 4  # log10 of its number_sample_per_shard default (10000)
FORMATS = ("files", "webdataset", "parquet")


@dataclass(frozen=True)
class Sample:
    key: str
    url: str
    caption: str
    jpg: bytes | None  # None: the download failed


def jpeg(rng: np.random.Generator, height: int = 32, width: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def samples(shard: int, count: int, failed: set[int], rng: np.random.Generator) -> list[Sample]:
    """``count`` samples of one shard; those at the ``failed`` indices have no image."""
    out = []
    for index in range(count):
        key = f"{shard:0{SHARD_DIGITS}d}{index:0{SAMPLE_DIGITS}d}"
        out.append(Sample(key, f"https://example.com/img/{key}.jpg", f"caption {key}",
                          None if index in failed else jpeg(rng)))
    return out


def _meta(sample: Sample) -> dict:
    """The per-sample metadata img2dataset keeps (its ``.json`` and its Parquet row)."""
    ok = sample.jpg is not None
    return {
        "url": sample.url, "caption": sample.caption, "key": sample.key,
        "status": "success" if ok else "failed_to_download",
        "error_message": None if ok else "HTTP Error 404: Not Found",
        "width": 40 if ok else None, "height": 32 if ok else None,
        "original_width": 80 if ok else None, "original_height": 64 if ok else None,
        "exif": None, "sha256": None,
    }


META_SCHEMA = pa.schema([
    ("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("status", pa.string()),
    ("error_message", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
    ("original_width", pa.int64()), ("original_height", pa.int64()), ("exif", pa.string()),
    ("sha256", pa.string()),
])


def _stats(folder: Path, shard_name: str, shard: list[Sample]) -> None:
    ok = sum(s.jpg is not None for s in shard)
    stats = {"count": len(shard), "successes": ok, "failed_to_download": len(shard) - ok,
             "failed_to_resize": 0, "duration": 1.5, "start_time": 0.0, "end_time": 1.5,
             "status_dict": {"success": ok, **({"HTTP Error 404: Not Found": len(shard) - ok} if ok < len(shard) else {})}}
    (folder / f"{shard_name}_stats.json").write_text(json.dumps(stats, indent=4))


def _metadata_parquet(path: Path, shard: list[Sample]) -> None:
    pq.write_table(pa.Table.from_pylist([_meta(s) for s in shard], schema=META_SCHEMA), path)


def _tar(path: Path, shard: list[Sample]) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in shard:
            if sample.jpg is None:
                continue  # a failed sample is only in the Parquet metadata
            for suffix, data in (("jpg", sample.jpg), ("txt", sample.caption.encode()),
                                 ("json", json.dumps(_meta(sample), indent=4).encode())):
                info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_img2dataset(folder: Path, output_format: str, shards: list[list[Sample]]) -> list[str]:
    """``shards`` written under ``folder`` in img2dataset's ``output_format``; returns the keys
    of the samples that have an image."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, shard in enumerate(shards):
        name = f"{number:0{SHARD_DIGITS}d}"
        _stats(folder, name, shard)
        if output_format == "files":
            (folder / name).mkdir()
            for sample in (s for s in shard if s.jpg is not None):
                (folder / name / f"{sample.key}.jpg").write_bytes(sample.jpg)
                (folder / name / f"{sample.key}.txt").write_text(sample.caption)
                (folder / name / f"{sample.key}.json").write_text(json.dumps(_meta(sample), indent=4))
            _metadata_parquet(folder / f"{name}.parquet", shard)
        elif output_format == "webdataset":
            _tar(folder / f"{name}.tar", shard)
            _metadata_parquet(folder / f"{name}.parquet", shard)
        elif output_format == "parquet":
            schema = META_SCHEMA.append(pa.field("jpg", pa.binary())).append(pa.field("txt", pa.string()))
            rows = [{**_meta(s), "jpg": s.jpg, "txt": s.caption if s.jpg is not None else None} for s in shard]
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{name}.parquet")
        else:
            raise ValueError(f"img2dataset has no output format {output_format!r}")
    return [s.key for shard in shards for s in shard if s.jpg is not None]


HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_hf_parquet(folder: Path, splits: dict[str, int], rng: np.random.Generator) -> int:
    """A Hugging Face dataset repository's Parquet export: ``README.md`` (the dataset card) and
    ``data/<split>-00000-of-00001.parquet`` with an ``image`` struct (``bytes``, ``path``) and a
    ``label``. Returns how many rows in all."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n"
                                      "  - name: label\n    dtype: int64\n---\n# a tiny dataset\n")
    for split, rows in splits.items():
        images = [{"bytes": jpeg(rng), "path": f"{split}_{n}.jpg"} for n in range(rows)]
        table = pa.table({"image": pa.array(images, HF_IMAGE), "label": pa.array(range(rows), pa.int64())})
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    return sum(splits.values())
