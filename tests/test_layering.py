"""Arrows point one way (DESIGN.md): flows -> actors -> models -> schemas. Checked on the source,
so a stray import fails here instead of surfacing as a Ray worker that cannot load a model."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "samflow"

FORBIDDEN = {
    "schemas": {"samflow.models", "samflow.actors", "samflow.flows", "torch", "ray", "prefect", "fsspec", "s3fs"},
    "models": {"samflow.actors", "samflow.flows", "ray", "prefect", "fsspec", "s3fs"},
    "actors": {"samflow.flows", "prefect", "fsspec", "s3fs"},
    "exporters": {"samflow.actors", "samflow.flows", "ray", "prefect", "fsspec", "s3fs"},
    # Storage reaches the index as a pyarrow filesystem or local files handed over by flows.
    "index": {"samflow.actors", "samflow.flows", "ray", "prefect", "fsspec", "s3fs"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_decode_and_writer_tasks_do_not_import_torch():
    """Decode and shard-writing tasks run in plain Ray workers beside the model actors; a worker
    that imported torch (3-4 s of CPU) mid-run would slow the models on a small node."""
    import subprocess
    import sys

    code = ("import sys, samflow.media.decode, samflow.store.storage, samflow.pipeline.writer; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
