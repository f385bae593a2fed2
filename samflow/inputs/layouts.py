"""Files that describe a dataset rather than hold its items: left out of a listing before its
format is detected, so they are neither inputs nor errors.

    img2dataset     ``<shard>_stats.json`` of every output format; the per-shard metadata
                    ``<shard>.parquet`` beside a ``<shard>.tar`` (webdataset) or a ``<shard>/``
                    folder of files (files); the ``.json`` / ``.txt`` sidecars beside each image
                    of the files format (also SA-1B's ``sa_N.json`` beside loose ``sa_N.jpg``)
    Hugging Face    the dataset card ``README.md`` and ``dataset_info(s).json`` of a repository
                    whose ``data/*.parquet`` hold the images
"""

from __future__ import annotations

import posixpath
import re

from samflow.inputs.formats import (
    IMAGE_SUFFIXES,
    TAR_SUFFIXES,
    VIDEO_SUFFIXES,
    sample_key,
)

_SHARD_STATS = re.compile(r"\d+_stats\.json")
_SHARD_PARQUET = re.compile(r"(\d+)\.parquet")
DATASET_CARDS = frozenset({"readme.md", "dataset_info.json", "dataset_infos.json"})
SIDECAR_SUFFIXES = (".json", ".txt")


def metadata_files(rel_paths: list[str]) -> set[str]:
    """Which of the listed paths (relative to SRC) are dataset metadata."""
    shards, samples = _shards_and_samples(rel_paths)
    found = set()
    for rel in rel_paths:
        folder, name = posixpath.split(rel)
        lower = name.lower()
        shard = _SHARD_PARQUET.fullmatch(lower)
        if (_SHARD_STATS.fullmatch(lower) or lower in DATASET_CARDS
                or (shard and posixpath.join(folder, shard.group(1)) in shards)
                or (lower.endswith(SIDECAR_SUFFIXES) and sample_key(rel) in samples)):
            found.add(rel)
    return found


def _shards_and_samples(rel_paths: list[str]) -> tuple[set[str], set[str]]:
    """The shard names present (tars, and folders holding files, without suffix) and the
    WebDataset sample keys of the images and videos."""
    shards: set[str] = set()
    samples: set[str] = set()
    for rel in rel_paths:
        folder, name = posixpath.split(rel)
        lower = name.lower()
        if folder:
            shards.add(folder)
        if lower.endswith(TAR_SUFFIXES):
            shards.add(posixpath.join(folder, name.split(".", 1)[0]))
        elif lower.endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES):
            samples.add(sample_key(rel))
    return shards, samples
