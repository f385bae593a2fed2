"""Which of the run's images a ground-truth image names.

A COCO ``file_name`` is matched, in this order: by samflow's own item id (``samflow_item_id``, in
what ``samflow export coco`` writes), by the run's URI as written, by the path relative to a
run's SRC, then by the file's base name when exactly one of the run's images has it. Video frames
match by item id only (their URI names the video).
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunImage:
    item_id: str
    uri: str
    height: int
    width: int


def _relative(uri: str, root: str) -> str | None:
    root = root.rstrip("/") + "/"
    return uri[len(root):] if uri.startswith(root) else None


def _normal(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


class ImageMatcher:
    """Finds the run image a ground-truth image names (see the module docstring)."""

    def __init__(self, images: Iterable[RunImage], sources: Iterable[str] = ()) -> None:
        self.by_item: dict[str, RunImage] = {}
        by_uri: dict[str, list[RunImage]] = defaultdict(list)
        for image in images:
            self.by_item[image.item_id] = image
            by_uri[image.uri].append(image)
        # a URI naming several rows is a video: its frames are matched by item id only
        self.by_uri = {uri: rows[0] for uri, rows in by_uri.items() if len(rows) == 1}
        self.by_relative: dict[str, RunImage] = {}
        for root in sources:
            root_path = _local_form(root)
            for uri, image in self.by_uri.items():
                rel = _relative(_local_form(uri), root_path)
                if rel is not None:
                    self.by_relative.setdefault(rel, image)
        by_name: dict[str, list[RunImage]] = defaultdict(list)
        for uri, image in self.by_uri.items():
            by_name[posixpath.basename(uri)].append(image)
        self.by_basename = {name: rows[0] for name, rows in by_name.items() if len(rows) == 1}
        self.ambiguous = {name for name, rows in by_name.items() if len(rows) > 1}

    def match(self, gt_image: dict[str, Any]) -> RunImage | None:
        item = gt_image.get("samflow_item_id")
        if isinstance(item, str) and item in self.by_item:
            return self.by_item[item]
        name = gt_image.get("file_name")
        if not isinstance(name, str) or not name:
            return None
        name = _normal(name)
        for candidate in (name, _local_form(name)):
            if candidate in self.by_uri:
                return self.by_uri[candidate]
        relative = name.lstrip("/")
        if relative in self.by_relative:
            return self.by_relative[relative]
        return self.by_basename.get(posixpath.basename(name))


def _local_form(uri: str) -> str:
    """``file:///x`` and ``/x`` name the same file."""
    return uri.removeprefix("file://")
