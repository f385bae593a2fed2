"""Search and dedup commands over an annotate run's output (storage and models wiring).

The vector work lives in :mod:`samflow.index`; this module finds the committed Parquet files,
hands them over as a pyarrow filesystem, picks the local work and cache folders, and loads the
run's CLIP model for text and image queries. Building, adding to and compacting an index:
:mod:`samflow.index.updates`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from samflow.config import StorageConfig
from samflow.index import store
from samflow.index.search import IdMap, Searcher, results
from samflow.index.source import KINDS
from samflow.media.image import DecodeError
from samflow.media.reread import picture
from samflow.schemas.tables import (
    EMBEDDING_MODELS,
)
from samflow.store.catalog import RUNS, Catalog
from samflow.store.runs import input_sections
from samflow.store.storage import read_bytes

if TYPE_CHECKING:
    from samflow.index.dedup import DedupParams

INDEX_DIR = "_index"

log = logging.getLogger(__name__)


class IndexUserError(ValueError):
    """A user mistake (no index yet, no vectors, a bad query): one line on stderr, exit 2."""


class RunIndex:
    """One DST's committed tables as a pyarrow filesystem, and where its indexes live."""

    def __init__(self, dst: str, storage: StorageConfig | None = None) -> None:
        self.dst = dst
        self.storage = storage or StorageConfig()
        self.catalog = Catalog(dst, self.storage)
        self.local = "file" in _protocols(self.catalog.fs)
        if self.local:
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
        else:
            self.fs = pafs.PyFileSystem(pafs.FSSpecHandler(self.catalog.fs))

    def committed_files(self, table: str) -> list[str]:
        """Paths (inside ``self.fs``) of the table's committed Parquet files, sorted."""
        committed = self.catalog.shard_names(self.catalog.committed_shards())
        folder = self.catalog.path(table)
        try:
            entries = self.catalog.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(p for p in entries if p.endswith(".parquet")
                      and posixpath.basename(p)[: -len(".parquet")] in committed)

    def root(self, kind: str, model: str = "clip") -> str:
        return self.catalog.path(INDEX_DIR, index_name(kind, model))

    def cache(self, kind: str, model: str = "clip") -> Path:
        """Local folder for work and downloaded builds: inside DST when DST is a local folder."""
        if self.local:
            return Path(self.root(kind, model))
        home = Path(os.environ.get("SAMFLOW_CACHE", Path.home() / ".cache" / "samflow"))
        key = hashlib.sha1(self.dst.rstrip("/").encode()).hexdigest()[:16]
        return home / "index" / key / index_name(kind, model)

    def run_models(self) -> dict[str, Any]:
        """Stage -> {model, checkpoint_sha256} of the newest run (manifests under ``_runs/``)
        that recorded models."""
        fs = self.catalog.fs
        try:
            manifests = sorted(p for p in fs.ls(self.catalog.path(RUNS), detail=False) if p.endswith(".json"))
        except FileNotFoundError:
            return {}
        for path in reversed(manifests):
            models = json.loads(fs.cat_file(path)).get("models") or {}
            if models:
                return models
        return {}

    def model(self, name: str = "clip") -> str | None:
        """The URI of embedding model ``name`` (clip, dinov2) in the newest run that recorded it."""
        stage = "embed" if name == "clip" else f"embed_{name}"
        return (self.run_models().get(stage) or {}).get("model")

    def manifest(self, kind: str, model: str = "clip") -> dict[str, Any] | None:
        return store.read_manifest(self.fs, self.root(kind, model))


def _protocols(fs: Any) -> tuple[str, ...]:
    """The protocols an fsspec filesystem answers to (a string or a tuple of them)."""
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def index_name(kind: str, model: str = "clip") -> str:
    """The index's folder under DST/_index/ (and its dedup file's name): ``image``, ``mask``
    for CLIP vectors (as always), ``image-dinov2`` for another model's."""
    return kind if model == "clip" else f"{kind}-{model}"


def check_kind(kind: str, model: str = "clip") -> None:
    if kind not in KINDS:
        raise IndexUserError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if model not in EMBEDDING_MODELS:
        raise IndexUserError(f"unknown embedding model {model!r}; expected one of {', '.join(EMBEDDING_MODELS)}")
    if kind == "mask" and model != "clip":
        raise IndexUserError(f"{model} vectors are per image only; mask vectors come from clip")


def no_index(dst: str, kind: str, model: str) -> IndexUserError:
    flags = f" --kind {kind}" + (f" --model {model}" if model != "clip" else "")
    return IndexUserError(f"no {index_name(kind, model)} index under {dst} yet; run `samflow index build {dst}{flags}`")


# --- search --------------------------------------------------------------------------------


class OpenIndex:
    """A published index, loaded for queries, with the model that made its vectors."""

    def __init__(self, dst: str, kind: str = "image", storage: StorageConfig | None = None,
                 model: str = "clip") -> None:
        check_kind(kind, model)
        self.run = RunIndex(dst, storage)
        self.kind = kind
        self.model_name = model
        manifest = self.run.manifest(kind, model)
        if manifest is None:
            raise no_index(dst, kind, model)
        self.manifest = manifest
        folders = store.fetch(self.run.fs, self.run.root(kind, model), self.run.cache(kind, model), manifest)
        self.searcher = Searcher.of_segments(folders, manifest)
        self.ids = IdMap([folder / store.IDS for folder in folders])
        self._clip = None

    @property
    def clip(self):
        """The model that made the index's vectors (CLIP, or DINOv2 for an image-dinov2 index)."""
        if self._clip is None:
            from samflow.models.loading.registry import load_model

            model = self.manifest.get("model") or self.run.model(self.model_name)
            if not model:
                raise IndexUserError(f"no {self.model_name} model recorded for {self.run.dst} (no run manifest under _runs/)")
            self._clip = load_model(self.model_name, model)
        return self._clip

    def text_vector(self, text: str) -> np.ndarray:
        if not text.strip():
            raise IndexUserError("the text query is empty")
        if self.model_name != "clip":
            raise IndexUserError(f"{self.model_name} has no text tower: search its index with --image")
        return self.clip.embed_texts([text]).float().numpy()

    def image_vector(self, data: bytes) -> np.ndarray:
        """The vector of a query image, decoded as the run decoded its own pictures."""
        limits = input_sections(self.run.dst, self.run.storage)("")
        try:
            pixels = picture(data, limits)
        except DecodeError as exc:
            raise IndexUserError(f"not a readable image: {exc.message}") from None
        return self.clip.embed_images([pixels]).float().numpy()

    def query(self, vector: np.ndarray, k: int = 20) -> list[dict[str, Any]]:
        if k < 1:
            raise IndexUserError(f"k must be at least 1 (got {k})")
        return [_clean(row, self.kind) for row in results(self.searcher, self.ids, vector, k)]


def _clean(row: dict[str, Any], kind: str) -> dict[str, Any]:
    keep = ["id", "uri", "item_id", "score"] + (["annotation_id", "bbox", "label"] if kind == "mask" else [])
    return {key: row.get(key) for key in keep}


def search(dst: str, text: str | None = None, image: str | None = None, k: int = 20,
           kind: str = "image", storage: StorageConfig | None = None, model: str = "clip") -> list[dict[str, Any]]:
    """Top-k by a text (CLIP text tower) or an image (path or URI)."""
    if (text is None) == (image is None):
        raise IndexUserError("give exactly one of --text or --image")
    index = OpenIndex(dst, kind, storage, model)
    if text is not None:
        vector = index.text_vector(text)
    else:
        try:
            data = read_bytes(image, index.run.storage)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise IndexUserError(f"cannot read image {image}: {type(exc).__name__}") from None
        vector = index.image_vector(data)
    return index.query(vector, k)


def in_code_notice(dst: str, kind: str = "image", model: str = "clip",
                   storage: StorageConfig | None = None) -> str | None:
    """One line when DST's ``kind`` vectors come from an in-code model (``tiny://``,
    ``random://``): random weights, so similarity follows colour and layout, not meaning."""
    from samflow.models.loading.registry import ModelLoadError, parse_uri

    uri = (RunIndex(dst, storage).manifest(kind, model) or {}).get("model") or ""
    try:
        in_code = bool(uri) and parse_uri(uri).in_code
    except ModelLoadError:
        return None
    if not in_code:
        return None
    return (f"note: these vectors come from {uri}, an in-code model with random weights; "
            "similarity follows colour and layout, not meaning")


# --- dedup ---------------------------------------------------------------------------------

DEDUP_DIR = "dedup"
HASH_THREADS = 8


def content_digests(uris: pa.ChunkedArray, storage: StorageConfig) -> np.ndarray:
    """16-byte BLAKE2b of each row's file, ``b""`` where the file is not an image of its own:
    a URI named by several rows (frames of one video) or one that cannot be read."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.compute as pc

    counts = pc.value_counts(uris)
    single = counts.field("values").filter(pc.equal(counts.field("counts"), 1))
    hashable = pc.is_in(uris, value_set=single).to_numpy(zero_copy_only=False)

    def digest(uri: str) -> bytes:
        try:
            return hashlib.blake2b(read_bytes(uri, storage), digest_size=16).digest()
        except OSError:
            return b""

    out = np.zeros(len(uris), dtype="S16")
    rows = np.flatnonzero(hashable)
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        for start in range(0, len(rows), 1024):
            block = rows[start:start + 1024]
            names = uris.take(block).to_pylist()
            out[block] = list(pool.map(digest, names))
    return out


def dedup(dst: str, threshold: float = 0.95, kind: str = "image",
          storage: StorageConfig | None = None, params: DedupParams | None = None,
          model: str = "clip") -> dict[str, Any]:
    """Near-duplicate groups of DST's ``kind`` vectors of ``model`` ->
    ``DST/dedup/<kind>.parquet`` (``<kind>-<model>.parquet`` for a model other than CLIP)."""
    import pyarrow.parquet as pq

    from samflow.index.dedup import SCHEMA, DedupParams, result_tables, semdedup
    from samflow.index.store import VectorFile

    if not 0.0 < threshold <= 1.0:
        raise IndexUserError(f"--threshold must be in (0, 1] (got {threshold})")
    check_kind(kind, model)
    run = RunIndex(dst, storage)
    if run.manifest(kind, model) is None:
        from samflow.index.updates import build_index

        build_index(dst, kind, storage=run.storage, model=model)
    manifest = run.manifest(kind, model)
    folders = store.fetch(run.fs, run.root(kind, model), run.cache(kind, model), manifest)
    ids = [folder / store.IDS for folder in folders]
    params = params or DedupParams()
    params.threshold = threshold
    digests = None
    if kind == "image":
        uris = pa.chunked_array([c for p in ids for c in pq.read_table(p, columns=["uri"]).column("uri").chunks])
        digests = content_digests(uris, run.storage)
    vectors = store.SegmentVectors([VectorFile(folder / store.VECTORS, manifest["dim"]) for folder in folders])
    result = semdedup(vectors, manifest["count"], digests, params)
    out_dir = run.catalog.path(DEDUP_DIR)
    run.fs.create_dir(out_dir, recursive=True)
    name = index_name(kind, model)
    out = f"{out_dir}/{name}.parquet"
    with run.fs.open_output_stream(out) as sink, pq.ParquetWriter(sink, SCHEMA) as writer:
        for table in result_tables(ids, result):
            writer.write_table(table)
    return {
        "output": run.catalog.dst.rstrip("/") + f"/{DEDUP_DIR}/{name}.parquet",
        "model": model,
        "vectors": manifest["count"],
        "kept": int(result.keep.sum()),
        "dropped": int((~result.keep).sum()),
        "byte_duplicates": result.byte_copies,
        "clusters": result.clusters,
        "threshold": threshold,
    }
