"""Near-duplicate detection: exact byte duplicates first, then SemDeDup (Abbas et al., 2023).

SemDeDup clusters the vectors with k-means (FAISS, trained on a sample, every vector assigned
in chunks), then compares vectors only within their cluster: each cluster's members are taken
least-prototypical first (lowest similarity to the centroid, as the paper keeps), and a member
is dropped when its cosine similarity to a member already kept reaches the threshold. Memory is
bounded by per-vector arrays (a few bytes each) plus one cluster's vectors and a block of its
similarity rows, never the whole matrix.

Output, one row per vector: id, uri, cluster, max_sim (highest similarity to another member of
its cluster, 1.0 for byte copies), nearest_kept_id (the kept vector it duplicates; null when
kept), keep.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from samflow.index.store import SegmentVectors, VectorFile

SCHEMA = pa.schema([
    ("id", pa.int64()), ("uri", pa.string()), ("cluster", pa.int32()), ("max_sim", pa.float32()),
    ("nearest_kept_id", pa.int64()), ("keep", pa.bool_()),
])


@dataclass
class DedupParams:
    threshold: float = 0.95  # cosine similarity at or above which two vectors are duplicates
    cluster_size: int = 1000  # mean members per k-means cluster (sets the cluster count)
    train_sample: int = 100_000
    niter: int = 20
    chunk_rows: int = 65_536
    block_rows: int = 2048  # similarity rows computed at once inside a cluster
    seed: int = 0


@dataclass
class DedupResult:
    cluster: np.ndarray  # (n,) int32
    max_sim: np.ndarray  # (n,) float32
    nearest_kept: np.ndarray  # (n,) int64, -1 when kept
    keep: np.ndarray  # (n,) bool
    byte_copies: int = 0  # dropped as exact byte copies (before the semantic step)
    clusters: int = 0

    @classmethod
    def empty(cls, n: int) -> "DedupResult":
        return cls(np.zeros(n, np.int32), np.zeros(n, np.float32), np.full(n, -1, np.int64), np.ones(n, bool))


def byte_duplicates(digests: np.ndarray, result: DedupResult) -> np.ndarray:
    """Mark every copy after the first of equal digests (``b""`` = unknown) as dropped; returns
    the mask of vectors still in play for the semantic step."""
    known = np.flatnonzero(digests != b"")
    _, first, inverse = np.unique(digests[known], return_index=True, return_inverse=True)
    originals = known[first][inverse]
    copies = known[originals != known]
    result.keep[copies] = False
    result.max_sim[copies] = 1.0
    result.nearest_kept[copies] = originals[originals != known]
    alive = np.ones(len(digests), bool)
    alive[copies] = False
    result.byte_copies = len(copies)
    return alive


def _kmeans(vectors: VectorFile | SegmentVectors, count: int, params: DedupParams) -> np.ndarray:
    k = max(1, min(count // max(params.cluster_size, 1), 50_000))
    rng = np.random.default_rng(params.seed)
    sample = vectors.take(np.sort(rng.choice(count, size=min(count, max(params.train_sample, 40 * k)), replace=False)))
    if k == 1:  # one cluster: its centre is the mean direction (FAISS would warn of a small sample)
        centre = sample.astype(np.float32).mean(axis=0, keepdims=True)
        return centre / max(float(np.linalg.norm(centre)), 1e-12)
    kmeans = faiss.Kmeans(vectors.dim, k, niter=params.niter, spherical=True, seed=params.seed, verbose=False)
    kmeans.train(sample)
    return kmeans.centroids


def _assign(vectors: VectorFile | SegmentVectors, count: int, centroids: np.ndarray, params: DedupParams) -> tuple[np.ndarray, np.ndarray]:
    """(cluster (n,), similarity to its centroid (n,)), the vectors read chunk by chunk."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    clusters = np.zeros(count, np.int32)
    to_centre = np.zeros(count, np.float32)
    for start, chunk in vectors.chunks(0, count, params.chunk_rows):
        sims, labels = index.search(chunk, 1)
        clusters[start:start + len(chunk)] = labels[:, 0]
        to_centre[start:start + len(chunk)] = sims[:, 0]
    return clusters, to_centre


def _dedup_cluster(members: np.ndarray, vectors: np.ndarray, params: DedupParams, result: DedupResult) -> None:
    """Greedy within one cluster; ``members`` already in keep-priority order."""
    m = len(members)
    kept = np.zeros(m, bool)
    for block in range(0, m, params.block_rows):
        sims = vectors[block:block + params.block_rows] @ vectors.T  # (b, m)
        for offset, row in enumerate(sims):
            j = block + offset
            others = np.delete(row, j) if m > 1 else row[:0]
            result.max_sim[members[j]] = float(others.max()) if len(others) else 0.0
            earlier = np.flatnonzero(kept[:j])
            if len(earlier):
                best = earlier[np.argmax(row[earlier])]
                if row[best] >= params.threshold:
                    result.keep[members[j]] = False
                    result.nearest_kept[members[j]] = members[best]
                    continue
            kept[j] = True


def semdedup(vectors: VectorFile | SegmentVectors, count: int, digests: np.ndarray | None, params: DedupParams) -> DedupResult:
    result = DedupResult.empty(count)
    alive = byte_duplicates(digests, result) if digests is not None else np.ones(count, bool)
    centroids = _kmeans(vectors, count, params)
    result.clusters = len(centroids)
    clusters, to_centre = _assign(vectors, count, centroids, params)
    result.cluster[:] = clusters
    candidates = np.flatnonzero(alive)
    # Group by cluster; inside each, least similar to the centroid first (the one kept).
    order = candidates[np.lexsort((to_centre[candidates], clusters[candidates]))]
    bounds = np.flatnonzero(np.diff(clusters[order])) + 1
    for members in np.split(order, bounds):
        if len(members):
            _dedup_cluster(members, vectors.take(members), params, result)
    return result


def result_tables(ids_paths: list[Path], result: DedupResult) -> Iterator[pa.Table]:
    """The output rows, one id-map row group at a time (ids and uris streamed from the
    segments' ids.parquet files)."""
    groups = [(pq.ParquetFile(path), group) for path in ids_paths
              for group in range(pq.ParquetFile(path).metadata.num_row_groups)]
    for ids_file, group in groups:
        part = ids_file.read_row_group(group, columns=["id", "uri"])
        ids = part.column("id").to_numpy()
        nearest = result.nearest_kept[ids]
        yield pa.table({
            "id": part.column("id"), "uri": part.column("uri"),
            "cluster": pa.array(result.cluster[ids]), "max_sim": pa.array(result.max_sim[ids]),
            "nearest_kept_id": pa.array(nearest, mask=nearest < 0), "keep": pa.array(result.keep[ids]),
        }, schema=SCHEMA)
