"""A built index, loaded for queries: top-k ids with exact cosine scores, and id -> row lookup.

IVF-PQ (samflow.index.build) finds ``k x refine_factor`` candidates from its PQ codes and re-scores
them exactly against the float32 vectors file (read with pread: only those rows, sorted, and the
pages read do not stay resident). Builds with the SQ8 stage (FAISS IndexRefine, ``rerank="sq8"``)
find ``2k x refine_factor`` candidates, re-rank them by their 8-bit scalar-quantized codes, and
re-score the best 2k from the file. Flat and HNSW indexes hold the float vectors themselves, so
their scores are already exact.

An index of several segments (``index add``) is searched as FAISS ``IndexShards`` over the
segments' indexes, with successive ids: each segment returns its own best candidates and FAISS
keeps the best overall. The segments share the trained quantizer and codebooks, so these are the
candidates one index of all the vectors returns, but for ties in the quantized fast-scan
distances at the cut (queries far from every vector); re-ranking reads each candidate from its
segment's file.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from samflow.index.source import normalise
from samflow.index.store import IDS, INDEX, VECTORS, SegmentVectors, VectorFile

EXACT_FACTOR = 2  # SQ8-ranked results re-scored exactly per result asked


def auto_nprobe(nlist: int) -> int:
    """Lists probed per query by builds that recorded none."""
    return max(16, nlist // 32)


def shards(index: faiss.Index) -> list[faiss.Index]:
    """The segments' indexes behind an ``IndexShards`` (else the index itself)."""
    if isinstance(index, faiss.IndexShards):
        return [faiss.downcast_index(index.at(i)) for i in range(index.count())]
    return [index]


class Searcher:
    def __init__(self, folder: Path, manifest: dict[str, Any], index: faiss.Index | None = None,
                 vectors: VectorFile | SegmentVectors | None = None) -> None:
        self.manifest = manifest
        self.type = manifest["type"]
        self.dim = int(manifest["dim"])
        params = manifest["params"]
        self.index = index if index is not None else faiss.read_index(str(folder / INDEX))
        self.refine_factor = int(params.get("refine_factor") or 10)
        self.refined = isinstance(shards(self.index)[0], faiss.IndexRefine)
        for part in shards(self.index):
            self._configure(part, params)
        self.vectors = vectors if vectors is not None else VectorFile(folder / VECTORS, self.dim)

    @classmethod
    def of_segments(cls, folders: list[Path], manifest: dict[str, Any]) -> "Searcher":
        """One searcher over every segment (ids successive in the manifest's order)."""
        if len(folders) == 1:
            return cls(folders[0], manifest)
        dim = int(manifest["dim"])
        index = faiss.IndexShards(dim, False, True)  # not threaded: FAISS already uses the cores per query batch
        for folder in folders:
            index.add_shard(faiss.read_index(str(folder / INDEX)))  # faiss keeps a reference to each
        vectors = SegmentVectors([VectorFile(folder / VECTORS, dim) for folder in folders])
        return cls(folders[0], manifest, index=index, vectors=vectors)

    def _configure(self, index: faiss.Index, params: dict[str, Any]) -> None:
        if self.type == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = int(params["nprobe"]) or auto_nprobe(int(params["nlist"]))
        if isinstance(index, faiss.IndexRefine):
            index.k_factor = float(self.refine_factor)
        if self.type == "hnsw":
            index.hnsw.efSearch = int(params["ef_search"])

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (q, k) float32, ids (q, k) int64); missing slots (fewer than k vectors) are -1."""
        queries = normalise(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have {queries.shape[1]} dimensions; the index has {self.dim}")
        k = max(1, min(int(k), self.count)) if self.count else 1
        if self.type != "ivfpq":
            return self.index.search(queries, k)
        if self.refined:
            _, candidates = self.index.search(queries, min(k * EXACT_FACTOR, self.count))
        else:
            _, candidates = self.index.search(queries, k * self.refine_factor)
        return self._rerank(queries, candidates, k)

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (query, found) in enumerate(zip(queries, candidates)):
            found = np.unique(found[found >= 0])  # sorted: forward reads
            exact = self.vectors.rows_at(found) @ query
            best = np.argsort(-exact, kind="stable")[:k]
            scores[row, : len(best)] = exact[best]
            ids[row, : len(best)] = found[best]
        return scores, ids


class IdMap:
    """Rows of the segments' ids.parquet files by global id (the files hold successive ids, in
    order), reading only the row groups that hold the asked ids."""

    def __init__(self, paths: Path | list[Path]) -> None:
        self.groups: list[tuple[pq.ParquetFile, int]] = []  # (file, row group) in id order
        self.starts = [0]
        for path in [paths] if isinstance(paths, Path) else paths:
            file = pq.ParquetFile(path)
            for group in range(file.metadata.num_row_groups):
                self.groups.append((file, group))
                self.starts.append(self.starts[-1] + file.metadata.row_group(group).num_rows)

    def rows(self, ids: list[int]) -> list[dict[str, Any]]:
        groups: dict[int, pa.Table] = {}
        out = []
        for id_ in ids:
            group = bisect.bisect_right(self.starts, id_) - 1
            if group not in groups:
                file, number = self.groups[group]
                groups[group] = file.read_row_group(number)
            out.append(groups[group].slice(id_ - self.starts[group], 1).to_pylist()[0])
        return out


def load(folders: list[Path], manifest: dict[str, Any]) -> tuple[Searcher, IdMap]:
    return Searcher.of_segments(folders, manifest), IdMap([folder / IDS for folder in folders])


def results(searcher: Searcher, ids_map: IdMap, query: np.ndarray, k: int) -> list[dict[str, Any]]:
    """One query's top-k as id-map rows with their ``score``, best first."""
    scores, ids = searcher.search(query, k)
    hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
    rows = ids_map.rows([i for i, _ in hits])
    return [{**row, "score": round(score, 6)} for row, (_, score) in zip(rows, hits)]
