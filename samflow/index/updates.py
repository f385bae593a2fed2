"""``samflow index build|add|compact``: publish, extend and merge the segments of a run's index.

A build publishes one segment holding every vector. ``index add`` collects only the files
committed since into a new segment (trained index reused, ids continuing past the published
ones) and uploads just that segment and the manifest. A compaction gathers every segment and
publishes one again; ``index add`` compacts past ``index.max_segments``, and retrains (a new
build over all vectors) when asked or once IVF-PQ holds DRIFT_FACTOR x its training count.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
from pathlib import Path
from typing import Any

import faiss

from samflow.config import IndexConfig, StorageConfig
from samflow.index import store
from samflow.index.build import Build, BuildParams
from samflow.index.commands import RunIndex, check_kind, index_name, no_index
from samflow.index.distributed import Parallel
from samflow.index.source import TABLE_OF_KIND, UriLookup, iter_vectors
from samflow.schemas.tables import LEGACY_EMBEDDING_TABLES, embeddings_table

DRIFT_FACTOR = 4  # IVF-PQ retrains on `index add` once it holds this many times its training count
MAX_SEGMENTS = IndexConfig.model_fields["max_segments"].default  # `index add` compacts past this

log = logging.getLogger(__name__)


def _tables(kind: str, model: str) -> list[str]:
    """The tables holding ``kind`` vectors of ``model`` (for DINOv2 also its pre-partition folder)."""
    if kind == "mask":
        return [TABLE_OF_KIND[kind]]
    legacy = LEGACY_EMBEDDING_TABLES.get(model)
    return [embeddings_table(model), *([legacy] if legacy else [])]


def _sources(run: RunIndex, kind: str, skip: set[str], model: str = "clip"):
    # Source names are the shard file names: a shard's rows of one model sit in one file.
    files = [f for table in _tables(kind, model) for f in run.committed_files(table)
             if posixpath.basename(f) not in skip]
    if not files:
        return []
    uris = UriLookup(run.fs, run.committed_files("images"))
    return [
        (posixpath.basename(path), lambda path=path: iter_vectors(run.fs, [path], kind, uris))
        for path in files
    ]


def build_index(dst: str, kind: str = "image", params: BuildParams | None = None,
                storage: StorageConfig | None = None, model: str = "clip",
                parallel: Parallel | None = None) -> dict[str, Any]:
    """Build (or resume building) the ``kind`` index of DST's ``model`` vectors and publish it
    as one segment (encoded in parts by ``parallel`` if given); returns its manifest."""
    check_kind(kind, model)
    run = RunIndex(dst, storage)
    work = run.cache(kind, model) / "_work"
    if "op" in (store.read_json(work / store.STATE) or {}):  # an add or compaction left behind
        shutil.rmtree(work, ignore_errors=True)
    if not (work / store.STATE).exists() and run.manifest(kind, model) is not None:
        log.info("replacing the existing %s index of %s", index_name(kind, model), dst)
    build = Build(work, params or BuildParams(), kind, run.model(model), parallel)
    manifest = build.run(_sources(run, kind, skip=set(), model=model))
    return _publish(run, kind, work, manifest, model)


def _params(saved: dict[str, Any]) -> BuildParams:
    """A published index's build parameters (keys this version does not know are dropped)."""
    known = set(BuildParams.__dataclass_fields__)
    return BuildParams(**{key: value for key, value in saved.items() if key in known})


def _published(run: RunIndex, kind: str, model: str) -> dict[str, Any]:
    manifest = run.manifest(kind, model)
    if manifest is None:
        raise no_index(run.dst, kind, model)
    return manifest


def _fresh_work(run: RunIndex, kind: str, model: str, op: str, manifest: dict[str, Any]) -> tuple[Path, bool]:
    """The work folder for ``op`` on the published ``manifest``, and whether it resumes one
    (a crashed run of the same op on the same published index); anything else there is dropped."""
    work = run.cache(kind, model) / "_work"
    state = store.read_json(work / store.STATE) or {}
    if state.get("op") == op and state.get("base") == manifest["build_id"]:
        return work, True
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work, False


def _segment_state(manifest: dict[str, Any], op: str, **overrides: Any) -> dict[str, Any]:
    state = {key: manifest[key] for key in ("kind", "model", "dim", "type", "trained_count", "params")}
    return {**state, "op": op, "base": manifest["build_id"], "sources": [], "count": 0, "build_s": 0.0,
            **overrides}


def add_to_index(dst: str, kind: str = "image", retrain: bool = False,
                 storage: StorageConfig | None = None, model: str = "clip",
                 max_segments: int = MAX_SEGMENTS) -> dict[str, Any]:
    """Add the vectors of files committed since the last build as a new segment: only that
    segment and the manifest are uploaded. Retrains (all vectors, one segment) when asked or
    once IVF-PQ would hold DRIFT_FACTOR x its training count; compacts past ``max_segments``."""
    check_kind(kind, model)
    run = RunIndex(dst, storage)
    manifest = _published(run, kind, model)
    new = _sources(run, kind, skip=set(manifest["sources"]), model=model)
    if not new and not retrain:
        return {**manifest, "added": 0}
    updated = None
    if not retrain:
        work, build = _collect_segment(run, kind, model, manifest, new)
        total = manifest["count"] + build.state["count"]
        retrain = manifest["type"] == "ivfpq" and total > DRIFT_FACTOR * manifest["trained_count"]
        if retrain:  # decided before anything is uploaded: the segment would be replaced at once
            log.info("index grew past %dx its training set: retraining", DRIFT_FACTOR)
            shutil.rmtree(work, ignore_errors=True)
        else:
            updated = _publish_segment(run, kind, model, manifest, work, build)
    if retrain:
        updated = compact_index(dst, kind, run.storage, model, retrain=True, new=new)
    elif len(store.segments(updated)) > max_segments:
        log.info("%d segments, more than %d: compacting", len(store.segments(updated)), max_segments)
        updated = compact_index(dst, kind, run.storage, model)
    updated["added"] = updated["count"] - manifest["count"]
    return updated


def _collect_segment(run: RunIndex, kind: str, model: str, manifest: dict[str, Any],
                     new: list) -> tuple[Path, Build]:
    """``new`` sources' vectors collected into the work folder of a segment after the published
    ones (ids from ``manifest["count"]``), starting from the trained index."""
    work, resumed = _fresh_work(run, kind, model, "add", manifest)
    if not resumed:
        index = store.trained_index(run.fs, run.root(kind, model), run.cache(kind, model), manifest)
        faiss.write_index(index, str(work / store.INDEX))
        store.write_json(work / store.STATE, _segment_state(manifest, "add", first_id=manifest["count"]))
    build = Build(work, _params(manifest["params"]), kind, manifest.get("model"))
    build.collect(new)
    return work, build


def _publish_segment(run: RunIndex, kind: str, model: str, manifest: dict[str, Any], work: Path,
                     build: Build) -> dict[str, Any]:
    """The collected segment encoded, uploaded, then listed in a new manifest; returns it."""
    root = run.root(kind, model)
    if not build.state["count"]:  # new files without vectors: recorded, so they are not read again
        updated = {**manifest, "sources": manifest["sources"] + build.state["sources"]}
        store.write_manifest(run.fs, root, updated)
        shutil.rmtree(work, ignore_errors=True)
        return updated
    segment = build.run([])
    entry = {"id": segment["build_id"], "start": manifest["count"], "count": segment["count"],
             "recall_at_10": segment["recall_at_10"], "added_at": segment["built_at"]}
    kept = {key: value for key, value in manifest.items() if key not in ("compacted", "added")}  # of that run only
    updated = {**kept, "build_id": segment["build_id"], "count": manifest["count"] + segment["count"],
               "sources": manifest["sources"] + segment["sources"],
               "segments": store.segments(manifest) + [entry], "peak_rss_mb": segment["peak_rss_mb"]}
    store.publish_segment(work, run.fs, root, entry["id"])
    store.write_manifest(run.fs, root, updated)
    shutil.rmtree(work, ignore_errors=True)
    return updated


def compact_index(dst: str, kind: str = "image", storage: StorageConfig | None = None, model: str = "clip",
                  retrain: bool = False, new: list | None = None) -> dict[str, Any]:
    """Merge every segment (and the ``new`` sources) into one, from the trained index (or
    retrained on all of them); publishes it and drops the old segments. Returns the manifest."""
    check_kind(kind, model)
    run = RunIndex(dst, storage)
    manifest = _published(run, kind, model)
    if len(store.segments(manifest)) == 1 and not (retrain or new):
        return {**manifest, "compacted": 0}
    op = "retrain" if retrain else "compact"
    work, resumed = _fresh_work(run, kind, model, op, manifest)
    if not resumed:
        root, cache = run.root(kind, model), run.cache(kind, model)
        count = store.gather(store.fetch(run.fs, root, cache, manifest), work)
        state = _segment_state(manifest, op, count=count, sources=manifest["sources"])
        if retrain:  # sized and tuned again
            state["params"] = {**state["params"], "nlist": 0, "pq_m": 0, "nprobe": 0, "refine_factor": 0}
        else:
            index = store.trained_index(run.fs, root, cache, manifest)
            faiss.write_index(index, str(work / store.INDEX))
            faiss.write_index(index, str(work / store.TRAINED))
        store.write_json(work / store.STATE, state)
    build = Build(work, _params(store.read_json(work / store.STATE)["params"]), kind, manifest.get("model"))
    updated = build.run(new or [], retrain=retrain)
    updated["compacted"] = len(store.segments(manifest))
    return _publish(run, kind, work, updated, model)


def _publish(run: RunIndex, kind: str, work: Path, manifest: dict[str, Any], model: str) -> dict[str, Any]:
    """A whole index (build, compaction, retraining): one segment holding every vector."""
    manifest["embedding_model"] = model
    manifest["segments"] = [{"id": manifest["build_id"], "start": 0, "count": manifest["count"],
                             "recall_at_10": manifest["recall_at_10"], "added_at": manifest["built_at"]}]
    store.publish(work, run.fs, run.root(kind, model), manifest)
    shutil.rmtree(work, ignore_errors=True)
    return manifest
