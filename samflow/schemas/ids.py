"""Stable identifiers: the same source always gets the same ids, on every run and machine."""

from __future__ import annotations

import hashlib


ID_KEY_PREFIX = "id:"  # starts the key of an input named by a manifest's id


def item_key(uri: str, source_id: str = "") -> str:
    """What makes an input the same input on every run: a manifest's ``id`` when it gives one
    (its files may move to new URIs), else the URI."""
    return f"{ID_KEY_PREFIX}{source_id}" if source_id else uri


def item_id(key: str, frame_index: int = 0) -> str:
    """Id of one image or sampled video frame: a hash of its input's key (``item_key``: source
    URI or manifest id) and frame index."""
    return hashlib.sha256(f"{key}#{frame_index}".encode()).hexdigest()[:32]


def annotation_id(item: str, index: int) -> str:
    """Id of the ``index``-th mask of an item (masks are ordered by the engine, deterministically)."""
    return f"{item}-{index:05d}"


def shard_id(keys: list[str]) -> str:
    """Deterministic shard name from the sorted keys it holds: a retried write overwrites itself."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return digest[:24]
