"""Stable identifiers: the same source always gets the same ids, on every run and machine."""

from __future__ import annotations

import hashlib


def item_id(uri: str, frame_index: int = 0) -> str:
    """Id of one image or sampled video frame: a hash of its source URI and frame index."""
    return hashlib.sha256(f"{uri}#{frame_index}".encode()).hexdigest()[:32]


def annotation_id(item: str, index: int) -> str:
    """Id of the ``index``-th mask of an item (masks are ordered by the engine, deterministically)."""
    return f"{item}-{index:05d}"


def shard_id(keys: list[str]) -> str:
    """Deterministic shard name from the sorted keys it holds: a retried write overwrites itself."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return digest[:24]
