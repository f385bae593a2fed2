"""Importing this makes the interpreter behave like the bare GPU machine bench/gpu.py is for: any
top-level module outside the standard library, the distributions torch, torchvision, transformers
and pyarrow need (their requirements, followed; the GPU machine's image has all four), samflow,
tests and the bench scripts fails to import, as if not installed (Ray, Prefect, pycocotools,
segment_anything, ...)."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PROVIDED = ("torch", "torchvision", "transformers", "pyarrow")
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


def required_distributions(roots: tuple[str, ...]) -> set[str]:
    """``roots`` and everything they require (extras left out), as normalised names."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if _key(name) in seen:
            continue
        seen.add(_key(name))
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        stack += [re.match(r"[A-Za-z0-9_.\-]+", r).group(0) for r in requires if "extra ==" not in r]
    return seen


def allowed_modules() -> set[str]:
    distributions = required_distributions(PROVIDED)
    allowed = set(sys.stdlib_module_names) | {"samflow", "tests"} | {p.stem for p in BENCH.glob("*.py")}
    for module, owners in metadata.packages_distributions().items():
        if any(_key(owner) in distributions for owner in owners):
            allowed.add(module)
    return allowed


class _Hiding:
    """A meta path finder that does not find what the bare machine lacks (so imports fail and
    ``importlib.util.find_spec`` probes, such as transformers' optional-package checks, say None)."""

    def __init__(self, finder: object, allowed: set[str]) -> None:
        self.finder = finder
        self.allowed = allowed

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        top = name.split(".")[0]
        if top not in self.allowed and not top.startswith("_"):
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attribute: str) -> object:
        return getattr(self.finder, attribute)


_ALLOWED = allowed_modules()
sys.meta_path[:] = [_Hiding(finder, _ALLOWED) for finder in sys.meta_path]
