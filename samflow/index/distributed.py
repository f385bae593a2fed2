"""Encode an index's vectors in parts, on other processes or nodes, and merge the parts.

The coarse quantizer and PQ codebooks are trained once, on a sample, by the build
(:meth:`samflow.index.build.Build.train`). Each part is one range of rows encoded (``index.add``)
into a copy of that trained, empty index and returned serialized; the parts are merged in row
order (FAISS ``merge_from``, ids offset by the range's start). A vector's codes depend only on
the trained index and the vector, so the merged index is the one adding every vector in one
process gives, and searches the same.

IVF-PQ fast scan keeps its codes in packed blocks, and FAISS's merge of those corrupts memory
after the first part; the parts are therefore plain IVF-PQ twins (same quantizer, same
codebooks, ArrayInvertedLists), merged, then packed once into the fast-scan layout, which gives
the index one process builds, byte for byte.

Flat and IVF indexes merge; HNSW (a graph built by insertion) and the SQ8 ``IndexRefine`` do not,
and are added in the build's process as before. Nothing here starts work elsewhere: a
:data:`PartRunner` does (``samflow.pipeline.index_parts``: Ray tasks across a cluster's nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import faiss
import numpy as np

from samflow.index.store import SegmentVectors, VectorFile

# (trained empty index, serialized; (first row, rows) ranges) -> (first row, encoded part
# serialized, the worker that encoded it) for every range, in the ranges' order.
PartRunner = Callable[[bytes, Iterator[tuple[int, np.ndarray]]], Iterator[tuple[int, bytes, str]]]


@dataclass
class Parallel:
    """How a build encodes in parts: the runner and how many parts it runs at a time."""

    runner: PartRunner
    workers: int


def can_merge(index: faiss.Index) -> bool:
    """Whether parts of ``index`` encoded apart can be merged into it (FAISS merge_from); a
    fast-scan index only while empty (its parts are packed once, at the end)."""
    if isinstance(index, faiss.IndexIVFPQFastScan):
        return index.ntotal == 0
    return isinstance(index, (faiss.IndexFlat, faiss.IndexIVF))


def encode_part(trained: bytes, rows: np.ndarray) -> bytes:
    """One range of rows encoded into a copy of the trained, empty index, serialized."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    index.add(rows)
    return faiss.serialize_index(index).tobytes()


def _plain_twin(index: faiss.IndexIVFPQFastScan) -> faiss.IndexIVFPQ:
    """An empty IVF-PQ with the fast-scan index's quantizer and codebooks (unpacked codes)."""
    twin = faiss.IndexIVFPQ(faiss.clone_index(index.quantizer), index.d, index.nlist, index.pq.M,
                            index.pq.nbits, index.metric_type)
    twin.pq = index.pq
    twin.by_residual = index.by_residual
    twin.is_trained = True
    return twin


def _ranges(vectors: VectorFile | SegmentVectors, start: int, stop: int, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    for begin in range(start, stop, rows):
        yield begin, vectors.read(begin, min(begin + rows, stop))


def encode_in_parts(index: faiss.Index, vectors: VectorFile | SegmentVectors, stop: int, rows: int,
                    parallel: Parallel) -> tuple[faiss.Index, set[str]]:
    """Rows ``index.ntotal..stop`` of ``vectors`` encoded in parts by ``parallel`` and merged in
    order. Returns the index holding them all (``index`` itself, or for fast scan a new one) and
    the workers that encoded them."""
    fast_scan = isinstance(index, faiss.IndexIVFPQFastScan)
    target = _plain_twin(index) if fast_scan else index
    empty = faiss.clone_index(target)
    empty.reset()
    start = int(target.ntotal)
    rows = min(rows, max(1, -(-(stop - start) // parallel.workers)))  # every worker gets a range, even when few rows
    workers: set[str] = set()
    for begin, part_bytes, worker in parallel.runner(faiss.serialize_index(empty).tobytes(),
                                                      _ranges(vectors, start, stop, rows)):
        part = faiss.deserialize_index(np.frombuffer(part_bytes, dtype=np.uint8))
        target.merge_from(part, begin if isinstance(target, faiss.IndexIVF) else 0)
        workers.add(worker)
    if fast_scan:  # packed once; cloned so the result owns its quantizer and codes
        return faiss.clone_index(faiss.IndexIVFPQFastScan(target)), workers
    return index, workers
