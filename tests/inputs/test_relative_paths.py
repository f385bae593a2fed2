"""The README's own commands with relative SRC and DST give what absolute paths give: the
sample's ground truth (``_gt/``, excluded by ``**/_*``) is never an input, and a DST inside SRC
is never listed as input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers.cli_process import run_module, samflow
from tests.helpers.cli_summary import summary_of

RUN = ("--profile", "tiny", "--set", "stages.embed.enabled=false")


def _tables(out: Path, root: Path) -> dict[str, list]:
    """The run's images and masks, named relative to ``root`` (item ids hash absolute URIs)."""
    images = pq.read_table(out / "images").to_pylist()
    uri_of = {row["item_id"]: str(Path(row["uri"]).relative_to(root)) for row in images}
    masks = pq.read_table(out / "annotations", columns=["item_id", "area", "bbox"]).to_pylist()
    return {
        "images": sorted((uri_of[r["item_id"]], r["width"], r["height"]) for r in images),
        "masks": sorted((uri_of[m["item_id"]], m["area"], tuple(m["bbox"])) for m in masks),
        "errors": sorted(r["uri"] for r in pq.read_table(out / "errors").to_pylist()) if (out / "errors").exists() else [],
    }


def _coco(path: Path, root: Path) -> list:
    coco = json.loads(path.read_text())
    name = {img["id"]: str(Path(img["file_name"]).relative_to(root)) if Path(img["file_name"]).is_absolute()
            else img["file_name"] for img in coco["images"]}
    return sorted((name[a["image_id"]], a["area"]) for a in coco["annotations"])


@pytest.mark.slow
def test_relative_and_absolute_paths_give_the_same_run(tmp_path: Path, ray_cluster) -> None:
    relative, absolute = tmp_path / "rel", tmp_path / "abs"
    # The session's cluster, joined as a user joins theirs: its workers run in another folder than
    # the command, so relative paths must reach them made absolute.
    joined = {"RAY_ADDRESS": ray_cluster.address}
    for root in (relative, absolute):
        root.mkdir()
        made = run_module("samflow.scenes.sample", "data/sample", "--synthetic", "2", "--no-skimage", cwd=root)
        assert made.returncode == 0, made.stderr
        assert any((root / "data/sample/_gt").iterdir())  # ground truth the default exclude must skip

    # DST inside SRC, as relative and as absolute paths (the second from an unrelated cwd).
    runs = {
        "rel": samflow("annotate", "data/sample", "--out", "data/sample/out", *RUN, cwd=relative, env=joined),
        "abs": samflow("annotate", str(absolute / "data/sample"), "--out", str(absolute / "data/sample/out"),
                       *RUN, cwd=tmp_path, env=joined),
    }
    counts = {name: summary_of(done.stdout)["counts"] for name, done in runs.items()}
    assert counts["rel"]["inputs"] == counts["abs"]["inputs"] == 2
    assert counts["rel"]["errors"] == counts["abs"]["errors"] == 0
    assert counts["rel"] == counts["abs"]
    tables = _tables(relative / "data/sample/out", relative / "data/sample")
    assert tables == _tables(absolute / "data/sample/out", absolute / "data/sample")
    assert [uri for uri, _, _ in tables["images"]] == sorted(p.name for p in (relative / "data/sample").glob("scene_*"))

    # A second look finds nothing new either way: neither DST's own files nor the ground truth.
    plans = [json.loads(samflow("plan", "sample", "--out", "sample/out", cwd=relative / "data", env=joined).stdout),
             json.loads(samflow("plan", str(absolute / "data/sample"), "--out", str(absolute / "data/sample/out"),
                                cwd=tmp_path, env=joined).stdout)]
    for plan, root in zip(plans, (relative, absolute)):
        assert plan["new"] == 0 and plan["done"] == 2
        # Everything else under SRC is excluded: DST's files (how many depends on how the run cut
        # its shards) and the ground truth.
        files = [path for path in (root / "data/sample").rglob("*") if path.is_file()]
        assert plan["excluded"] == len(files) - 2

    samflow("export", "coco", "data/sample/out", "coco.json", cwd=relative, env=joined)
    samflow("export", "coco", str(absolute / "data/sample/out"), str(absolute / "coco.json"), cwd=tmp_path, env=joined)
    exported = _coco(relative / "coco.json", relative / "data/sample")
    assert exported and exported == _coco(absolute / "coco.json", absolute / "data/sample")
