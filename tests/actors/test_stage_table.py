"""A new stage is its module plus one line in the stage table: nothing in pipeline/ or cli/ changes.

The toy stage (tests/helpers/toy_stage.py) is added to the table before samflow's config is built,
then enabled from the command line like any stage, and runs in the real pipeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from samflow.actors.table import STAGE_TABLE, sections
from tests.helpers.cli_summary import summary_of

REPO = Path(__file__).resolve().parents[2]

# What a user's entry point (or a plugin's) does: one line added to the table, then the CLI.
WITH_TOY = """
import sys
from samflow.actors import table
from tests.helpers.toy_stage import ENTRY
table.STAGE_TABLE = (*table.STAGE_TABLE, ENTRY)
from samflow.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_every_table_line_has_its_config_section():
    from samflow.config import RunConfig

    stages = RunConfig().stages
    assert set(sections()) == set(type(stages).model_fields)
    for entry in STAGE_TABLE:
        assert isinstance(getattr(stages, entry.section), entry.config)
        assert entry.stage_class().__name__ == entry.stage.rsplit(":", 1)[1]


def test_a_toy_stage_added_by_one_table_line_runs_from_the_command_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k in range(3):
        Image.fromarray(np.full((12, 16, 3), (k + 1) * 60, np.uint8)).save(src / f"{k}.png")
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, "-c", WITH_TOY, "annotate", "src", "--out", "out", "--profile", "tiny",
               "--set", "stages.toy.enabled=true", "--set", "stages.toy.corner=3", "--set", "stages.toy.label=toy",
               "--set", "stages.segment.enabled=false", "--set", "stages.embed.enabled=false"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    annotations = pq.read_table(tmp_path / "out" / "annotations")
    assert annotations.num_rows == 3
    assert set(annotations["label"].to_pylist()) == {"toy"} and set(annotations["area"].to_pylist()) == {9}
    run_id = summary_of(proc.stdout)["run_id"]
    manifest = json.loads((tmp_path / "out" / "_runs" / f"{run_id}.json").read_text())
    assert manifest["models"]["toy"]["model"] == "tiny://sam"

    unknown = subprocess.run([sys.executable, "-m", "samflow.cli.main", "annotate", "src", "--out", "out2",
                              "--set", "stages.toy.enabled=true"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "toy" in unknown.stderr  # without the table line there is no such section
