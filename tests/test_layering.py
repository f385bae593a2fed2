"""Arrows point one way (docs/architecture.md, "Layout"): from the command line and flows down to
schemas. Checked on the source, so a stray import fails here instead of surfacing as a Ray worker
that cannot load a model."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "samflow"

ABOVE_MODELS = {"samflow.actors", "samflow.inputs", "samflow.pipeline", "samflow.index", "samflow.exporters",
                "samflow.serve", "samflow.flows", "samflow.cli"}
ENTRY = {"samflow.flows", "samflow.cli"}  # only the command line and Prefect flows orchestrate
SERVICES = {"ray", "prefect", "fsspec", "s3fs"}

FORBIDDEN = {
    "schemas": {"samflow.media", "samflow.models", "samflow.store", "samflow.config", *ABOVE_MODELS, "torch", *SERVICES},
    "media": {"samflow.models", "samflow.store", "samflow.config", *ABOVE_MODELS, "torch", *SERVICES},
    # models/loading alone reaches storage: it copies s3:// and https:// models into the node's cache
    "models": {*ABOVE_MODELS, "ray", "prefect"},
    "actors": {"samflow.store", "samflow.inputs", "samflow.pipeline", "samflow.index", "samflow.exporters",
               "samflow.serve", *ENTRY, "prefect", "fsspec", "s3fs"},
    "inputs": {"samflow.actors", "samflow.models", "samflow.pipeline", *ENTRY, "prefect", "torch"},
    "store": {"samflow.actors", "samflow.models", "samflow.pipeline", *ENTRY, "prefect", "torch"},
    "pipeline": {*ENTRY, "prefect"},
    "exporters": {"samflow.actors", "samflow.pipeline", *ENTRY, "ray", "prefect"},
    "index": {"samflow.actors", "samflow.pipeline", *ENTRY, "ray", "prefect"},
    "serve": {"samflow.actors", "samflow.pipeline", *ENTRY, "prefect"},
    "flows": {"samflow.cli"},
    # rounds records and reads what a round did; the flow (flows/engine_round.py) runs it
    "rounds": {"samflow.actors", "samflow.pipeline", "samflow.train", *ENTRY, "ray", "prefect", "torch"},
}


def _models_outside_loading_reach_no_storage() -> list[str]:
    offenders = []
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        if "loading" in path.relative_to(PACKAGE / "models").parts:
            continue
        for name in _imports(path):
            if name.split(".")[0] in {"fsspec", "s3fs"} or name.startswith("samflow.store"):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return offenders


def test_only_model_loading_reaches_storage():
    offenders = _models_outside_loading_reach_no_storage()
    assert not offenders, "\n".join(offenders)


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

    code = ("import sys, samflow.media.decode, samflow.store.storage, samflow.pipeline.writer, samflow.config; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_commands_driver_imports_neither_torch_nor_prefects_server(tmp_path):
    """The command's own process plans and orchestrates; models load in the actors. Its preflight
    of a local model reads config.json (torch would cost the driver 1.2 s of start-up), and
    Prefect's temporary server starts as a process without its package imported here (2 s)."""
    import os
    import subprocess
    import sys

    model = tmp_path / "clip"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "clip"}')
    (tmp_path / "src").mkdir()
    code = (
        "import sys, samflow.cli.main, samflow.cli.session, samflow.flows.annotate\n"
        "from samflow.cli.preflight import check_run\n"
        "from samflow.config import load_config\n"
        f"cfg = load_config(overrides=['stages.segment.enabled=false', 'stages.embed.model={model}'])\n"
        f"check_run('{tmp_path / 'src'}', '{tmp_path / 'out'}', cfg)\n"
        "from prefect import flow\n"
        "from samflow.cli.prefect_server import temporary_server\n"
        "with temporary_server() as ready:\n"
        "    ready()\n"
        "    assert flow(lambda: 41)() == 41\n"  # the flow runs against that server, starts none
        "print(sorted(m for m in ('torch', 'transformers', 'prefect.server.api.server') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # as on a fresh machine
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"  # a loaded test machine
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip().splitlines()[-1] == "[]"
