"""A manifest's ``id`` column names its items: the ids reach the images table, and files moved to
new URIs under the same ids are not annotated again."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers.cli_process import samflow
from tests.helpers.cli_summary import summary_of

RUN = ("--profile", "tiny", "--set", "stages.embed.enabled=false")
IDS = ("cat-001", "dog-002", "owl-003")


def _write_manifest(path: Path, folder: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uri", "id", "caption"])
        for n, key in enumerate(IDS):
            writer.writerow([str(folder / f"photo{n}.png"), key, f"a photo of {key}"])


def _images(out: Path) -> list[dict]:
    return sorted(pq.read_table(out / "images").to_pylist(), key=lambda row: row["source_id"])


@pytest.mark.slow
def test_manifest_ids_key_the_items_so_moved_files_are_not_done_again(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for n in range(len(IDS)):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(photos / f"photo{n}.png")
    _write_manifest(tmp_path / "manifest.csv", photos)

    first = summary_of(samflow("annotate", "manifest.csv", "--out", "out", *RUN, cwd=tmp_path).stdout)
    assert first["counts"]["inputs"] == first["counts"]["images"] == len(IDS)
    images = _images(tmp_path / "out")
    assert [row["source_id"] for row in images] == list(IDS)
    assert [row["uri"] for row in images] == [str(photos / f"photo{n}.png") for n in range(len(IDS))]
    assert len({row["item_id"] for row in images}) == len(IDS)
    written = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*") if "_runs" not in p.parts)

    moved = tmp_path / "moved" / "elsewhere"
    shutil.move(photos, moved)
    _write_manifest(tmp_path / "manifest.csv", moved)
    again = summary_of(samflow("annotate", "manifest.csv", "--out", "out", *RUN, cwd=tmp_path).stdout)
    assert again["run_id"] is None
    assert (again["counts"]["listed"], again["counts"]["already_done"], again["counts"]["inputs"]) == (3, 3, 0)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*") if "_runs" not in p.parts) == written
