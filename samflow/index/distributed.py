"""Encode an index's vectors with Ray tasks, across the nodes of a cluster.

The coarse quantizer and PQ codebooks are trained once, on a sample, by the driver
(:meth:`samflow.index.build.Build.train`). Each task gets that trained, empty index and one
range of rows, encodes them (``index.add``) and returns its part as a serialized FAISS index; the
driver merges the parts in row order (FAISS ``merge_from``, ids offset by the range's start). A
vector's codes depend only on the trained index and the vector, so the merged index holds what
adding every vector in one process gives, and searches the same.

IVF-PQ fast scan keeps its codes in packed blocks, and FAISS's merge of those corrupts memory
after the first part; the parts are therefore plain IVF-PQ twins (same quantizer, same
codebooks, ArrayInvertedLists), merged, then packed once into the fast-scan layout, which gives
the index adding every vector in one process gives, byte for byte.

Flat and IVF indexes merge; HNSW (a graph built by insertion) and the SQ8 ``IndexRefine`` do not,
and are added in the driver as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np

from samflow.index.store import SegmentVectors, VectorFile

IN_FLIGHT_PER_TASK = 2  # ranges queued per task slot: the object store holds a few chunks, not all rows


def can_merge(index: faiss.Index) -> bool:
    """Whether parts of ``index`` encoded apart can be merged into it (FAISS merge_from); a
    fast-scan index only while empty (its parts are packed once, at the end)."""
    if isinstance(index, faiss.IndexIVFPQFastScan):
        return index.ntotal == 0
    return isinstance(index, (faiss.IndexFlat, faiss.IndexIVF))


def _plain_twin(index: faiss.IndexIVFPQFastScan) -> faiss.IndexIVFPQ:
    """An empty IVF-PQ with the fast-scan index's quantizer and codebooks (unpacked codes)."""
    twin = faiss.IndexIVFPQ(faiss.clone_index(index.quantizer), index.d, index.nlist, index.pq.M,
                            index.pq.nbits, index.metric_type)
    twin.pq = index.pq
    twin.by_residual = index.by_residual
    twin.is_trained = True
    return twin


def _encode(trained: bytes, rows: np.ndarray) -> tuple[bytes, str]:
    """One range: (its part as a serialized index, the node that encoded it)."""
    import ray

    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    index.add(rows)
    return faiss.serialize_index(index).tobytes(), ray.get_runtime_context().get_node_id()


def _ranges(start: int, stop: int, rows: int) -> Iterator[tuple[int, int]]:
    for begin in range(start, stop, rows):
        yield begin, min(begin + rows, stop)


def encode_on_ray(index: faiss.Index, vectors: VectorFile | SegmentVectors, stop: int, rows: int,
                  tasks: int) -> tuple[faiss.Index, set[str]]:
    """Rows ``index.ntotal..stop`` of ``vectors`` encoded by up to ``tasks`` Ray tasks at a time
    (spread over the cluster's nodes) and merged in order. Returns the index holding them all
    (``index`` itself, or for fast scan a new one) and the ids of the nodes that encoded them."""
    import ray

    encode = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_encode)
    fast_scan = isinstance(index, faiss.IndexIVFPQFastScan)
    target = _plain_twin(index) if fast_scan else index
    empty = faiss.clone_index(target)
    empty.reset()
    trained = ray.put(faiss.serialize_index(empty).tobytes())
    pending: list[tuple[int, ray.ObjectRef]] = []
    nodes: set[str] = set()
    start = int(target.ntotal)
    rows = min(rows, max(1, -(-(stop - start) // tasks)))  # every task gets a range, even when few rows
    ranges = _ranges(start, stop, rows)

    def submit() -> None:
        for begin, end in ranges:
            pending.append((begin, encode.remote(trained, vectors.read(begin, end))))
            if len(pending) >= tasks * IN_FLIGHT_PER_TASK:
                return

    submit()
    while pending:
        begin, ref = pending.pop(0)  # in row order: flat indexes number rows by arrival
        part_bytes, node = ray.get(ref)
        part = faiss.deserialize_index(np.frombuffer(part_bytes, dtype=np.uint8))
        target.merge_from(part, begin if isinstance(target, faiss.IndexIVF) else 0)
        nodes.add(node)
        submit()
    if fast_scan:  # packed once; cloned so the result owns its quantizer and codes
        return faiss.clone_index(faiss.IndexIVFPQFastScan(target)), nodes
    return index, nodes
