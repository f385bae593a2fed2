"""Training samples from DST's tables, streamed through Ray Data (never all in memory).

A sample is one image with its masks: the ground-truth rows of ``annotations/`` (source
``ground_truth``) and the masks people kept in ``reviews/`` (accepted, corrected, added). Each
committed shard is read on its own (its ``images/`` and ``annotations/`` files share the shard's
name), so a worker holds one shard's rows at a time. Images are read from their ``uri``, decoded
and resized exactly as the segment stage does (`resize_longest_pad`; SAM 2: `resize_square`);
masks go to the decoder's low-resolution frame (`targets.masks_in_frame`) and travel bit-packed.

Items are split into training and held out by a hash of ``item_id``: the same split every run.
An image that cannot be read or decoded (a video frame, a file gone since the run) is skipped.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from samflow.config import StorageConfig
from samflow.models.common.preprocess import (
    Normalisation,
    resize_longest_pad,
    resize_square,
)
from samflow.store.catalog import Catalog
from samflow.store.storage import read_bytes
from samflow.train.targets import decode_rles, masks_in_frame, pack

GROUND_TRUTH = "ground_truth"
_MAX_PIXELS = 178_956_970

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFrame:
    """What the samples must match: the model's input side, mask side and normalisation."""

    image_size: int
    low_res: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    square: bool = False  # images resized to image_size x image_size (SAM 2), not padded (SAM)


@dataclass
class Reviews:
    """Reviewed masks people kept, by item (counts strings), and the version they form."""

    by_item: dict[str, list[str]] = field(default_factory=dict)
    version: str | None = None
    masks: int = 0


def is_held_out(item_id: str, fraction: float) -> bool:
    """Whether an item is in the held-out split (stable: a hash of its id)."""
    bucket = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big") / 2**32
    return bucket < fraction


def committed_shards(dst: str, storage: StorageConfig) -> list[str]:
    catalog = Catalog(dst, storage)
    return sorted(catalog.shard_names(catalog.committed_shards()))


def read_reviews(dst: str, storage: StorageConfig) -> Reviews:
    """The masks people settled on in DST's reviews/ (none without one), and its version: a
    hash of the imports they came from. Reviews are people's work, few next to the run's masks:
    read whole, and sent to the readers by item."""
    from samflow.reviews.table import read_reviews as read_table
    from samflow.reviews.table import reviewed_masks

    table = read_table(dst, storage)
    masks = reviewed_masks(table)
    if not masks:
        return Reviews()
    by_item = {item: [rle["counts"] for rle, _ in pairs] for item, pairs in masks.items()}
    imports = sorted(set(table.column("import_id").to_pylist()) - {None})
    version = hashlib.sha256("\n".join(imports).encode()).hexdigest()[:16]
    return Reviews(by_item, version, sum(len(v) for v in by_item.values()))


class ShardItems:
    """One committed shard's name -> one row per item with masks."""

    def __init__(self, dst: str, storage: StorageConfig, reviews: dict[str, list[str]]) -> None:
        self.catalog = Catalog(dst, storage)
        self.reviews = reviews

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        shard = row["shard"]
        images = self._read("images", shard, ["item_id", "uri", "width", "height"])
        if images is None:
            return []
        truth: dict[str, list[str]] = defaultdict(list)
        annotations = self._read("annotations", shard, ["item_id", "segmentation", "source"])
        if annotations is not None:
            annotations = annotations.filter(pc.equal(annotations["source"], GROUND_TRUTH))
            for item, seg in zip(annotations["item_id"].to_pylist(), annotations["segmentation"].to_pylist()):
                truth[item].append(seg["counts"])
        rows = []
        for image in images.to_pylist():
            counts = truth.get(image["item_id"], []) + self.reviews.get(image["item_id"], [])
            if counts:
                rows.append({**image, "counts": counts})
        return rows

    def _read(self, table: str, shard: str, columns: list[str]):
        path = self.catalog.path(table, f"{shard}.parquet")
        if not self.catalog.fs.exists(path):
            return None
        return pq.read_table(path, filesystem=self.catalog.fs, columns=columns)


class PrepareSamples:
    """Item rows -> the model's input pixels and the masks in the
    decoder's frame. Members of one tar or Parquet file are read in one pass over it."""

    def __init__(self, storage: StorageConfig, frame: ModelFrame) -> None:
        self.storage = storage
        self.frame = frame
        self.norm = Normalisation(frame.mean, frame.std)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from samflow.media.image import DecodeError, decode_image

        data = item_bytes([str(u) for u in batch["uri"]], self.storage)
        out: dict[str, list] = {"item_id": [], "pixels": [], "masks": [], "num_masks": []}
        for row in range(len(batch["uri"])):
            uri = str(batch["uri"][row])
            try:
                image = decode_image(data[uri], _MAX_PIXELS)
            except (KeyError, DecodeError) as exc:
                log.warning("skipping %s: %s", uri, exc if data.get(uri) is not None else "could not be read")
                continue
            height, width = image.shape[:2]
            if (height, width) != (int(batch["height"][row]), int(batch["width"][row])):
                log.warning("skipping %s: it is not the size its masks were made on", uri)
                continue
            pixels = self._pixels(image)
            masks = masks_in_frame(decode_rles([str(c) for c in batch["counts"][row]], height, width),
                                   self.frame.image_size, self.frame.low_res, self.frame.square)
            out["item_id"].append(str(batch["item_id"][row]))
            out["pixels"].append(pixels[0].numpy())
            out["masks"].append(pack(masks))
            out["num_masks"].append(len(masks))
        side = self.frame.image_size
        return {"item_id": np.array(out["item_id"], dtype=object),
                "pixels": np.stack(out["pixels"]) if out["pixels"] else np.zeros((0, 3, side, side), np.float32),
                "masks": np.array(out["masks"], dtype=object), "num_masks": np.array(out["num_masks"], dtype=np.int64)}

    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        """The model's input, made as its segment stage makes it."""
        side, cpu = self.frame.image_size, torch.device("cpu")
        if self.frame.square:
            return resize_square([image], (side, side), self.norm, cpu, torch.float32)
        return resize_longest_pad([image], side, self.norm, cpu, torch.float32)[0]


def item_bytes(uris: list[str], storage: StorageConfig) -> dict[str, bytes]:
    """The bytes of each readable item: loose files by URI, tar and Parquet members through the
    run's own container reader (one pass per container)."""
    from samflow.inputs.formats import TAR_SUFFIXES, container_of
    from samflow.inputs.plan import ContainerItems

    found: dict[str, bytes] = {}
    wanted: dict[str, list[dict[str, str]]] = defaultdict(list)
    for uri in uris:
        container = container_of(uri)
        if not container:
            try:
                found[uri] = read_bytes(uri, storage)
            except OSError as exc:
                log.warning("cannot read %s: %s", uri, exc)
            continue
        fmt = "webdataset" if container.lower().endswith(TAR_SUFFIXES) else "parquet"
        wanted[fmt].append({"key": uri, "container": container, "error_type": "", "error_message": ""})
    for fmt, keys in wanted.items():
        for part in ContainerItems(storage, fmt)(pa.Table.from_pylist(keys)):
            for row in part.select(["uri", "data", "error_type"]).to_pylist():
                if row["data"] is not None and not row["error_type"]:
                    found[row["uri"]] = row["data"]
    return found


def sample_datasets(dst: str, storage: StorageConfig, frame: ModelFrame, reviews: Reviews,
                    holdout_fraction: float) -> dict[str, Any]:
    """{"train": Dataset, "holdout": Dataset} of prepared samples (lazy: nothing runs yet)."""
    import ray.data

    shards = committed_shards(dst, storage)
    if not shards:
        return {}
    # Tasks, not actors: every epoch executes the datasets again, and a new actor pool would
    # import torch and samflow each time, while task workers stay warm between executions.
    items = ray.data.from_items([{"shard": s} for s in shards]).flat_map(
        _shard_items, fn_args=(dst, storage, reviews.by_item), concurrency=1)
    prepare = {"fn_args": (storage, frame), "concurrency": 1, "batch_size": None, "batch_format": "numpy"}
    train = items.filter(lambda r: not is_held_out(r["item_id"], holdout_fraction))
    holdout = items.filter(lambda r: is_held_out(r["item_id"], holdout_fraction))
    return {"train": train.map_batches(_prepare_samples, **prepare),
            "holdout": holdout.map_batches(_prepare_samples, **prepare)}


def _shard_items(row: dict[str, Any], dst: str, storage: StorageConfig,
                 reviews: dict[str, list[str]]) -> list[dict[str, Any]]:
    return ShardItems(dst, storage, reviews)(row)


def _prepare_samples(batch: dict[str, np.ndarray], storage: StorageConfig, frame: ModelFrame) -> dict[str, np.ndarray]:
    return PrepareSamples(storage, frame)(batch)


def item_counts(dst: str, storage: StorageConfig, reviews: Reviews, holdout_fraction: float) -> dict[str, int]:
    """Items and masks in each split, counted from the tables (for the lineage and the
    empty-data check); streams one shard at a time."""
    counts = {"train_items": 0, "train_masks": 0, "holdout_items": 0, "holdout_masks": 0}
    reader = ShardItems(dst, storage, reviews.by_item)
    for shard in committed_shards(dst, storage):
        for row in reader({"shard": shard}):
            split = "holdout" if is_held_out(row["item_id"], holdout_fraction) else "train"
            counts[f"{split}_items"] += 1
            counts[f"{split}_masks"] += len(row["counts"])
    return counts

