"""Index, search and dedup on a real tiny-model annotate run, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from samflow.cli.main import main
from tests.helpers.index_data import tiny_annotate_run


@pytest.fixture(scope="module")
def run_dst(tmp_path_factory, ray_cluster, prefect_server):
    dst = tiny_annotate_run(tmp_path_factory.mktemp("index-run"), ("stages.embed.models=[clip, dinov2]",))
    assert main(["index", "build", dst]) == 0
    assert main(["index", "build", dst, "--kind", "mask"]) == 0
    return dst


def _json_out(capsys) -> object:
    return json.loads(capsys.readouterr().out)


def test_index_manifests_describe_the_run(run_dst):
    image = json.loads(open(f"{run_dst}/_index/image/manifest.json").read())
    mask = json.loads(open(f"{run_dst}/_index/mask/manifest.json").read())
    assert image["count"] == 5 and image["type"] == "flat" and image["model"] == "tiny://clip"
    masks = pq.read_table(f"{run_dst}/annotations").num_rows
    assert mask["count"] == masks > 0
    assert image["recall_at_10"] == mask["recall_at_10"] == 1.0


def test_search_by_text_and_by_image(run_dst, capsys, tmp_path):
    assert main(["search", run_dst, "--text", "a red car", "-k", "3", "--json"]) == 0
    hits = _json_out(capsys)
    assert len(hits) == 3 and {"uri", "item_id", "score"} <= set(hits[0])
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    image = f"{run_dst}/../src/scene_2.png"
    assert main(["search", run_dst, "--image", image, "-k", "2", "--json"]) == 0
    hits = _json_out(capsys)
    assert hits[0]["uri"].endswith("scene_2.png") and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_search_masks_gives_boxes_and_labels(run_dst, capsys):
    assert main(["search", run_dst, "--text", "a dog", "--kind", "mask", "-k", "4", "--json"]) == 0
    hits = _json_out(capsys)
    assert hits and all(len(h["bbox"]) == 4 and h["label"] in ("cat", "dog", "car") and h["annotation_id"] for h in hits)


def test_search_user_errors_exit_2_with_one_line(run_dst, capsys, tmp_path):
    assert main(["search", run_dst, "--image", str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("samflow search:") and "\n" not in err
    assert main(["search", str(tmp_path / "nothing"), "--text", "x"]) == 2
    assert "no image index" in capsys.readouterr().err


def test_dedup_on_a_run_flags_the_byte_copy(run_dst, capsys):
    assert main(["dedup", run_dst, "--threshold", "0.95"]) == 0
    summary = _json_out(capsys)
    assert summary["byte_duplicates"] == 1
    rows = pq.read_table(f"{run_dst}/dedup/image.parquet").to_pylist()
    assert len(rows) == 5
    pair = [r for r in rows if r["uri"].endswith(("/copy.png", "/scene_0.png"))]
    assert len(pair) == 2
    # Exactly one of the two byte-identical files is dropped as a copy of the other. (Tiny CLIP's
    # random vectors are all alike, so the semantic step may drop others too: not checked here.)
    copies = [r for r in pair if not r["keep"] and r["max_sim"] == 1.0
              and r["nearest_kept_id"] == next(o["id"] for o in pair if o is not r)]
    assert len(copies) == 1
    assert summary["kept"] + summary["dropped"] == 5


def test_dinov2_vectors_index_search_and_dedup(run_dst, capsys):
    """stages.embed.models: [clip, dinov2]: one embeddings row per image per model, committed
    exactly once; the DINOv2 index is searched by image through the run's DINOv2 model."""
    from tests.helpers.accounting import assert_exactly_once

    src = Path(run_dst).parent / "src"
    tables = assert_exactly_once(run_dst, [str(p) for p in sorted(src.iterdir())])
    dino = tables["embeddings/dinov2"]
    assert sorted(r["item_id"] for r in dino) == sorted(r["item_id"] for r in tables["embeddings"])
    assert {r["model"] for r in dino} == {"tiny://dinov2"}

    assert main(["index", "build", run_dst, "--model", "dinov2"]) == 0
    manifest = _json_out(capsys)
    assert manifest["model"] == "tiny://dinov2" and manifest["count"] == 5 and manifest["embedding_model"] == "dinov2"
    assert manifest["dim"] == len(dino[0]["embedding"])
    assert main(["search", run_dst, "--model", "dinov2", "--image", f"{src}/scene_3.png", "-k", "2", "--json"]) == 0
    hits = _json_out(capsys)
    assert hits[0]["uri"].endswith("scene_3.png") and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert main(["dedup", run_dst, "--model", "dinov2"]) == 0
    summary = _json_out(capsys)
    assert summary["byte_duplicates"] == 1 and summary["output"].endswith("/dedup/image-dinov2.parquet")
    assert pq.read_table(f"{run_dst}/dedup/image-dinov2.parquet").num_rows == 5


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]


def _chromium(profile, *args: str) -> str:
    import subprocess

    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout


def test_preview_renders_images_overlays_and_search_results(run_dst, capsys, tmp_path):
    import os
    import re

    import numpy as np
    from PIL import Image

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"headless page test needs {CHROMIUM} (scripts/setup.sh installs Debian's chromium)")
    out = tmp_path / "report.html"
    assert main(["preview", run_dst, "--out", str(out), "--search", "a red car"]) == 0
    summary = _json_out(capsys)
    assert summary["shown"] == 5 and summary["searches"] == {"a red car": 5}
    page = out.read_text()
    assert page.count('class="card"') == 10 and page.count('class="overlay"') == 10
    dom = _chromium(tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom", out.as_uri())
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-photos-loaded="10"' in body and 'data-overlays-loaded="10"' in body, body
    assert "page 1 of 1" in dom  # the paging script ran
    shot = tmp_path / "shot.png"
    _chromium(tmp_path / "profile-shot", "--window-size=1200,900", f"--screenshot={shot}", out.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # The page background is flat grey; the painted thumbnails cover a large, colourful area.
    painted = np.abs(pixels.astype(int) - pixels[5, 5].astype(int)).sum(axis=2) > 30
    assert painted.mean() > 0.1 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000
