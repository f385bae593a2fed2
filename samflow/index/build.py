"""Build an index from streamed vector batches, resumably, and add to it later.

The build is a small state machine kept in ``<work>/state.json``, so a crashed build resumes:

    collect   each source (a committed Parquet file) appends its vectors to vectors.f32 and its
              id-map part; the state records the source and the new row count after each one
              (a crash mid-source is cut back to the last recorded count)
    train     the index type is chosen from the count; IVF-PQ trains its coarse quantizer,
              codebooks and scalar quantizer on a random sample read back from vectors.f32
    add       vectors are added from the file in chunks; the index is checkpointed every
              CHECKPOINT_S seconds and ``index.ntotal`` says where to go on
    tune      IVF-PQ: the smallest nprobe and refine factor that reach ``target_recall`` on
              held-out queries (unless given)
    evaluate  recall@10 of the index against exact search on held-out queries

IVF-PQ search (samflow.index.search) scans the nearest lists with 4-bit PQ codes (FAISS fast
scan) and re-scores the best ``refine_factor`` x k candidates exactly from the float32 vectors on
disk, so memory holds the codes alone. ``rerank="sq8"`` (earlier builds' default) adds 8-bit
scalar-quantized copies in memory as a middle stage.

``index add`` runs the same machine in a fresh folder for a new segment: only the new sources are
collected (their ids continue past the published ones: ``first_id``), training is skipped (the
segment starts from the published ``trained.faiss``), and the segment's recall is measured on its
own vectors. A compaction runs it over the gathered segments, from the trained index again.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from samflow.index.distributed import Parallel, can_merge, encode_in_parts
from samflow.index.search import Searcher
from samflow.index.source import VectorBatch, normalise
from samflow.index.store import (
    INDEX,
    STATE,
    TRAINED,
    VECTORS,
    VectorFile,
    drop_id_parts_from,
    merge_id_parts,
    read_json,
    write_id_part,
    write_json,
)

TYPES = ("auto", "flat", "ivfpq", "hnsw")
FAISS_SEED = 1234  # FAISS's own default k-means seed: params.seed 0 trains what FAISS does unseeded
MIN_IVFPQ_VECTORS = 10_000  # below this, IVF lists are too small to train and flat search is fast anyway
RECALL_K = 10
CHECKPOINT_S = 30.0  # seconds of adding between index checkpoints (an IVF-PQ index is ~d bytes/vector)
RERANKS = ("file", "sq8")
METHODS = {
    "sq8": ("IVF{nlist} + PQ{pq_m}x4 fast scan -> top {refine_factor} x 2k re-ranked by SQ8 codes (IndexRefine) "
            "-> top 2k re-scored exactly on the float32 vectors"),
    "file": "IVF{nlist} + PQ{pq_m}x4 fast scan -> top {refine_factor} x k re-scored exactly on the float32 vectors file",
}


class IndexBuildError(ValueError):
    """A build that cannot go ahead as asked (user-facing message)."""


@dataclass
class BuildParams:
    index: str = "auto"  # auto: flat below flat_max vectors, IVF-PQ above
    flat_max: int = 200_000
    nlist: int = 0  # IVF lists; 0: sqrt(count), at most train_sample / 39
    pq_m: int = 0  # 4-bit PQ sub-quantizers (pq_m / 2 bytes per vector); 0: dim / 4 (a divisor of dim)
    nprobe: int = 0  # IVF lists probed per query; 0: tuned on held-out queries
    refine_factor: int = 0  # PQ candidates per result re-ranked (by SQ8 or the file); 0: tuned on held-out queries
    # How IVF-PQ candidates are re-ranked: "file": exactly, from the float32 vectors file on disk
    # (memory: the PQ codes alone, d/8 bytes per vector); "sq8": first by in-memory 8-bit
    # scalar-quantized codes (FAISS IndexRefine, d more bytes per vector), then the top 2k exactly.
    rerank: str = "file"
    target_recall: float = 0.97  # what tuning aims for (recall@10 on held-out queries)
    hnsw_m: int = 32
    ef_search: int = 128
    train_sample: int = 65_536
    chunk_rows: int = 32_768
    recall_queries: int = 200
    seed: int = 0


# A source: a name recorded in the state (the Parquet file) and a function streaming its batches.
Source = tuple[str, Callable[[], Iterator[VectorBatch]]]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Build:
    def __init__(self, work: Path, params: BuildParams, kind: str, model: str | None,
                 parallel: Parallel | None = None) -> None:
        if params.index not in TYPES:
            raise IndexBuildError(f"unknown index type {params.index!r}; expected one of {', '.join(TYPES)}")
        if params.rerank not in RERANKS:
            raise IndexBuildError(f"unknown re-ranking {params.rerank!r}; expected one of {', '.join(RERANKS)}")
        self.work = work
        self.params = params
        self.parallel = parallel  # encode in parts elsewhere (samflow.index.distributed); None: here
        work.mkdir(parents=True, exist_ok=True)
        self.state = read_json(work / STATE) or {
            "kind": kind, "model": model, "sources": [], "count": 0, "dim": 0, "type": None,
            "trained_count": 0, "build_s": 0.0,
        }
        if model and not self.state.get("model"):
            self.state["model"] = model

    # --- collect --------------------------------------------------------------------------

    def collect(self, sources: Iterable[Source]) -> int:
        """Append every source not yet in; returns the number of vectors added by this call."""
        done = set(self.state["sources"])
        self._cut_back()
        added = 0
        for name, batches in sources:
            if name in done:
                continue
            start = self.state["count"]
            count = start
            for batch in batches():
                count += self._append(batch, count)
            self.state["sources"].append(name)
            self.state["count"] = count
            self._save()
            added += count - start
        return added

    def _append(self, batch: VectorBatch, start: int) -> int:
        dim = batch.vectors.shape[1]
        if self.state["dim"] and dim != self.state["dim"]:
            raise IndexBuildError(f"vectors of width {dim} do not fit an index of width {self.state['dim']}")
        self.state["dim"] = dim
        VectorFile(self.work / VECTORS, dim).append(normalise(batch.vectors))
        write_id_part(self.work, start, batch.meta, self.state.get("first_id", 0))
        return len(batch.vectors)

    def _cut_back(self) -> None:
        """Drop what a crashed collect wrote past the last recorded count."""
        if self.state["dim"]:
            VectorFile(self.work / VECTORS, self.state["dim"]).truncate(self.state["count"])
        if (self.work / "ids").exists():
            drop_id_parts_from(self.work, self.state["count"])

    # --- train and add --------------------------------------------------------------------

    def choose_type(self) -> str:
        count, asked = self.state["count"], self.params.index
        if asked == "auto":
            return "flat" if count < max(self.params.flat_max, MIN_IVFPQ_VECTORS) else "ivfpq"
        if asked == "ivfpq" and count < MIN_IVFPQ_VECTORS:
            raise IndexBuildError(
                f"ivfpq needs at least {MIN_IVFPQ_VECTORS} vectors to train (have {count}); use --index flat or auto"
            )
        return asked

    def train(self) -> faiss.Index:
        """The trained, empty index (also written as the first checkpoint)."""
        count, dim = self.state["count"], self.state["dim"]
        kind = self.choose_type()
        self.state["type"] = kind
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            index = self._trained_ivfpq(count, dim)
        self.state["trained_count"] = count
        self._checkpoint(index)
        shutil.copyfile(self.work / INDEX, self.work / TRAINED)  # what later segments start from
        return index

    def _trained_ivfpq(self, count: int, dim: int) -> faiss.Index:
        sample_rows = min(count, self.params.train_sample)
        nlist = self.params.nlist or max(1, min(int(math.sqrt(count)), sample_rows // 39))
        pq_m = self.params.pq_m or largest_divisor_at_most(dim, max(1, dim // 4))
        self.params.nlist, self.params.pq_m = nlist, pq_m
        # Unit vectors: L2 order = inner-product order, and L2 residual codes are FAISS's best-kept
        # path. Candidates are re-ranked by (near) exact inner product anyway.
        base = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(dim), dim, nlist, pq_m, 4)
        base.cp.niter = 10  # coarse k-means: more iterations cost minutes at 1M, recall nothing
        # Both k-means (coarse lists, PQ codebooks) seeded from params.seed, like the sample: two
        # builds of the same vectors train the same index (whatever FAISS's thread count; see
        # tests/index/test_index_distributed.py), so they answer the same.
        base.cp.seed = base.pq.cp.seed = FAISS_SEED + self.params.seed
        index = base
        if self.params.rerank == "sq8":
            index = faiss.IndexRefine(base, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit))
        rng = np.random.default_rng(self.params.seed)
        rows = np.sort(rng.choice(count, size=sample_rows, replace=False))
        index.train(VectorFile(self.work / VECTORS, dim).rows_at(rows))
        return index

    def add(self, index: faiss.Index) -> faiss.Index:
        """Add vectors past ``index.ntotal`` from the file, chunk by chunk, with checkpoints
        (or in parts by ``self.parallel``)."""
        vectors = VectorFile(self.work / VECTORS, self.state["dim"])
        if self.parallel and can_merge(index):
            index, workers = encode_in_parts(index, vectors, self.state["count"], self.params.chunk_rows, self.parallel)
            self.state["encode_nodes"] = len(workers) or self.state.get("encode_nodes", 0)
            self._checkpoint(index)
            return index
        chunks = vectors.chunks(int(index.ntotal), self.state["count"], self.params.chunk_rows)
        last = time.monotonic()
        for _, chunk in chunks:
            index.add(chunk)
            if time.monotonic() - last > CHECKPOINT_S:
                self._checkpoint(index)
                last = time.monotonic()
        self._checkpoint(index)
        return index

    def _checkpoint(self, index: faiss.Index) -> None:
        tmp = self.work / f".{INDEX}.tmp"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, self.work / INDEX)
        self._save()

    def _save(self) -> None:
        self.state["params"] = asdict(self.params)
        write_json(self.work / STATE, self.state)

    # --- the whole run --------------------------------------------------------------------

    def run(self, sources: Iterable[Source], retrain: bool = False) -> dict[str, Any]:
        """Collect, train (first build, or when asked), add, evaluate; returns the manifest."""
        started = time.perf_counter()
        self.collect(sources)
        if not self.state["count"]:
            raise IndexBuildError("no vectors to index (run annotate first; masks need stages.embed.mask_embeddings=true)")
        if (self.work / INDEX).exists() and not retrain and self.state.get("type"):
            self._restore_params()
            index = faiss.read_index(str(self.work / INDEX))
            if self.state["type"] == "ivfpq":  # what the trained index does, whatever the params said
                self.params.rerank = "sq8" if isinstance(index, faiss.IndexRefine) else "file"
        else:
            index = self.train()
        index = self.add(index)
        if self.state["type"] == "ivfpq" and not (self.params.nprobe and self.params.refine_factor):
            self.state["tuning"] = tune(index, self.work, self.state["count"], self.params)
        merge_id_parts(self.work)
        self.state["build_s"] = self.state.get("build_s", 0.0) + time.perf_counter() - started
        return self.manifest(index)

    def _restore_params(self) -> None:
        saved = self.state.get("params") or {}
        for key in ("nlist", "pq_m", "nprobe", "refine_factor", "target_recall", "hnsw_m", "ef_search"):
            if key in saved:
                setattr(self.params, key, saved[key])

    def manifest(self, index: faiss.Index) -> dict[str, Any]:
        manifest = {
            "build_id": f"b-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
            "kind": self.state["kind"],
            "type": self.state["type"],
            "params": asdict(self.params),
            "count": int(index.ntotal),
            "dim": self.state["dim"],
            "model": self.state.get("model"),
            "sources": self.state["sources"],
            "trained_count": self.state["trained_count"],
            "built_at": datetime.now(timezone.utc).isoformat(),
            "build_s": round(self.state["build_s"], 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        if self.state.get("encode_nodes"):
            manifest["encode_nodes"] = self.state["encode_nodes"]  # workers (Ray nodes) that encoded the vectors
        if self.state["type"] == "ivfpq":
            manifest["method"] = METHODS[self.params.rerank].format(**manifest["params"])
            manifest["tuning"] = self.state.get("tuning", [])
        searcher = Searcher(self.work, manifest, index=index)
        recall, queries = recall_at_k(searcher, VectorFile(self.work / VECTORS, manifest["dim"]),
                                      manifest["count"], self.params, RECALL_K)
        manifest.update({"recall_at_10": round(recall, 4), "recall_queries": queries})
        return manifest


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if n % d == 0)


def held_out_queries(vectors: VectorFile, count: int, params: BuildParams, salt: int = 1) -> np.ndarray:
    """Stored vectors picked at random, each nudged off its own point (noise of norm 0.1), so a
    query is near data without being a copy of it. ``salt`` draws another set (tuning uses its
    own queries, so the recall reported is not the recall tuned for)."""
    rng = np.random.default_rng(params.seed + salt)
    n = min(params.recall_queries, count)
    rows = np.sort(rng.choice(count, size=n, replace=False))
    base = vectors.take(rows)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise *= 0.1 / np.linalg.norm(noise, axis=1, keepdims=True)
    return normalise(base + noise)


def exact_top_k(vectors: VectorFile, count: int, queries: np.ndarray, k: int, chunk_rows: int) -> np.ndarray:
    """Exact inner-product top-k ids, streaming the vectors file (bounded memory)."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start, chunk in vectors.chunks(0, count, chunk_rows):
        scores, ids = faiss.knn(queries, chunk, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, ids + start], axis=1)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(all_scores, order, axis=1)
        best_ids = np.take_along_axis(all_ids, order, axis=1)
        del chunk  # before the next one is read: one chunk in memory, not two
    return best_ids


def recall_at_k(searcher: Searcher, vectors: VectorFile, count: int, params: BuildParams, k: int) -> tuple[float, int]:
    """Mean fraction of the exact top-k that the index returns in its top-k."""
    queries = held_out_queries(vectors, count, params)
    k = min(k, count)
    truth = exact_top_k(vectors, count, queries, k, params.chunk_rows)
    _, found = searcher.search(queries, k)
    return overlap(truth, found), len(queries)


def overlap(truth: np.ndarray, found: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(t.tolist()) & set(f.tolist())) / k for t, f in zip(truth, found)]))


NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TUNING_SALT = 2
# Re-ranking from the file costs a read per candidate, so its factors step finer (recall climbs
# steeply between 32 and 64 at 1M vectors: bench/index.py).
REFINE_FACTORS = {"sq8": (4, 8, 16, 32, 64), "file": (8, 16, 24, 32, 48, 64, 96, 128)}


def tune(index: faiss.Index, work: Path, count: int, params: BuildParams) -> list[dict[str, Any]]:
    """Set ``params.nprobe`` / ``refine_factor`` (those left at 0) to the cheapest pair found
    that reaches ``target_recall`` on held-out queries: refine factors from small to large, and
    for each, nprobe doubled until recall reaches the target or stops rising. Returns the trials."""
    vectors = VectorFile(work / VECTORS, index.d)
    queries = held_out_queries(vectors, count, params, salt=TUNING_SALT)
    k = min(RECALL_K, count)
    truth = exact_top_k(vectors, count, queries, k, params.chunk_rows)
    nlist = int(params.nlist)
    nprobes = [params.nprobe] if params.nprobe else sorted({min(n, nlist) for n in NPROBES})
    factors = [params.refine_factor] if params.refine_factor else list(REFINE_FACTORS[params.rerank])
    trials: list[dict[str, Any]] = []
    best = None
    start = 0  # recall's need for lists hardly depends on the factor: go on where the last plateaued
    for factor in factors:
        previous = -1.0
        for position in range(start, len(nprobes)):
            nprobe = nprobes[position]
            params.nprobe, params.refine_factor = nprobe, factor
            manifest = {"type": "ivfpq", "dim": index.d, "params": asdict(params)}
            _, found = Searcher(work, manifest, index=index).search(queries, k)
            recall = overlap(truth, found)
            trials.append({"nprobe": nprobe, "refine_factor": factor, "recall_at_10": round(recall, 4)})
            if best is None or recall > best[0] + 1e-9:
                best = (recall, nprobe, factor)
            if recall >= params.target_recall or recall <= previous + 0.002:
                start = max(0, position - 1)
                break
            previous = recall
        if best[0] >= params.target_recall:
            break
    _, params.nprobe, params.refine_factor = best
    return trials
