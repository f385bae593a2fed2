"""The README tells the truth: its fences are balanced, and its own commands, taken from the
README itself, run on the sample as a user types them (the tiny profile, offline)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli_summary import summary_of

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block; fails on a fence left open."""
    blocks, language, lines = [], None, []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            if language is None:
                language, lines, opened = line[3:].strip() or "text", [], number
            else:
                assert not line[3:].strip(), f"README.md:{number}: a fence opens inside the block opened at line {opened}"
                blocks.append((language, lines))
                language = None
        elif language is not None:
            assert not line.startswith("## "), f"README.md:{number}: a heading inside the block opened at line {opened}"
            lines.append(line)
    assert language is None, f"README.md: the fence opened at line {opened} is never closed"
    return blocks


def _commands(blocks: list[tuple[str, list[str]]]) -> list[str]:
    """The bash commands a user can run as written on the sample: optional [--flags] dropped,
    comments cut, placeholders (s3://, ..., ARGS) and long-running servers left out."""
    found = []
    for language, lines in blocks:
        if language != "bash":
            continue
        for line in lines:
            command = re.sub(r"\s+#.*$", "", line).strip()
            command = re.sub(r"\s*\[[^\]]*\]", "", command)
            if "samflow" not in command or not ("sample" in command or "models check" in command):
                continue
            if any(skip in command for skip in ("s3://", "...", "serve ", "--model dinov2", "pytest")):
                continue
            found.append(command)
    return found


def test_fences_are_balanced_and_no_heading_hides_in_a_block():
    assert [language for language, _ in _fenced_blocks(README)]


def test_the_setup_command_is_setup_then_the_sample_run():
    first = _commands(_fenced_blocks(README))[0]
    assert first.startswith("./scripts/setup.sh && ") and "annotate data/sample --out out/sample --profile tiny" in first


@pytest.mark.slow
def test_the_readmes_commands_run_on_the_sample(tmp_path):
    commands = _commands(_fenced_blocks(README))
    setup, rest = commands[0], commands[1:]
    # The setup script installs into .venv; the test's environment is that install already.
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PREFECT_API_URL", None)  # a fresh machine has no Prefect server configured
    names = {"export coco", "models check", "plan", "runs", "index build", "index add", "index compact", "search",
             "dedup", "preview", "synth"}
    ran = set()
    for command in [setup.removeprefix("./scripts/setup.sh && "), *rest]:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\nexited {done.returncode}:\n{done.stderr[-3000:]}"
        words = shlex.split(command.split("&&")[-1])[1:]
        ran.add(" ".join(words[:2]) if words[0] in {"export", "models", "index"} else words[0])
        if " annotate " in command:
            counts = summary_of(done.stdout)["counts"]
            assert counts["errors"] == 0 and counts["inputs"] == counts["images"] > 0, counts
            manifest = json.loads(next((tmp_path / "out/sample/_runs").glob("*.json")).read_text())
            assert "segment" in manifest["models"] and "track" not in manifest["models"]  # no videos: no tracker started
            startup = manifest["timings_s"]["startup"]  # the command's start to its first model batch, by phase
            assert set(startup) == {"process", "ray_start", "plan", "actors", "total"}
            # Ray started beside Prefect's server, before the flow: its seconds are in "process"
            assert startup["total"] >= startup["process"] + startup["actors"] > startup["actors"] > 0
        if words[0] == "synth":  # the tiny profile's dry run keeps what it generates, as SA-1B-style tars
            assert list((tmp_path / "out/syn").glob("*.tar")), done.stderr
        if words[0] == "dedup" and "--model" not in words:
            dedup = json.loads(done.stdout)
            assert dedup["dropped"] == 0 and dedup["kept"] == dedup["vectors"], dedup  # distinct pictures stay distinct
            assert "in-code model" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert names <= ran, f"the README no longer shows {sorted(names - ran)}"
    _each_picture_finds_itself_first(tmp_path, env)


def _each_picture_finds_itself_first(tmp_path: Path, env: dict[str, str]) -> None:
    """Search by image, with the README's search command, from a relative path."""
    pictures = sorted(p for p in (tmp_path / "data/sample").iterdir() if p.suffix in {".png", ".jpg"})
    for picture in pictures[:4]:
        query = str(picture.relative_to(tmp_path))
        done = subprocess.run(["samflow", "search", "out/sample", "--image", query, "--json", "-k", "2"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        hits = json.loads(done.stdout)
        assert hits[0]["uri"].endswith(picture.name) and hits[0]["score"] > hits[1]["score"], hits
    assert (tmp_path / "out/sample.coco.json").exists() and (tmp_path / "report.html").exists()
