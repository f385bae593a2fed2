"""One pipeline run on the local Ray cluster with the new families together: an upscale model
served over HTTP (fetched through the node's model cache), Mask R-CNN rows from propose, a
semantic stage, and DINOv2 as a second embedding model."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from samflow.config import load_config
from samflow.models.realesrgan.arch import SRVGGNetCompact
from samflow.models.detectors.maskrcnn import TINY_CLASSES
from samflow.models.unet.runner import TINY as TINY_UNET
from samflow.pipeline.graph import run_pipeline
from samflow.scenes.sample import synthetic_scene


def _read(dst: Path, table: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((dst / table).glob("*.parquet"))])


@pytest.fixture(scope="module")
def served_checkpoint(tmp_path_factory):
    """A small Real-ESRGAN-layout checkpoint behind a local HTTP server: (url, request paths)."""
    root = tmp_path_factory.mktemp("www")
    torch.manual_seed(0)
    torch.save({"params": SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).state_dict()}, root / "x2.pth")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/x2.pth", requests
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_cluster, served_checkpoint):
    url, requests = served_checkpoint
    src = tmp_path_factory.mktemp("families-in")
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(40, 48), (64, 72), (40, 48)]):
        Image.fromarray(synthetic_scene(rng, h, w, n_shapes=2)[0]).save(src / f"img{i}.png")
    items = [{"uri": str(p), "size": p.stat().st_size} for p in sorted(src.iterdir())]
    cfg = load_config(profile="tiny", overrides=[
        "stages.upscale.enabled=true", f"stages.upscale.model={url}", "stages.upscale.min_short_side=48",
        "stages.propose.enabled=true", "stages.propose.model=tiny://maskrcnn", "stages.propose.maskrcnn_masks=rows",
        "stages.propose.score_thresh=0.0", "stages.propose.max_boxes=3",
        "stages.semantic.enabled=true", "stages.semantic.skip_classes=[]",
        "stages.embed.models=[clip, dinov2]", "output.shard_rows=2", "stages.track.enabled=false",
        # six model pools on the session cluster's six logical CPUs, with decode and the writer
        *(f"stages.{name}.num_cpus=0.5" for name in ("upscale", "propose", "segment", "embed", "semantic")),
    ])
    dst = tmp_path_factory.mktemp("families-out")
    stats = run_pipeline(items, cfg, str(dst), "run-families")
    return dst, stats, url, requests


def test_remote_upscale_model_was_fetched_once_and_recorded_by_its_uri(run):
    dst, stats, url, requests = run
    assert requests == ["/x2.pth"]
    assert stats.models["upscale"]["model"] == url
    factors = _read(dst, "images").column("upscale_factor").to_pylist()
    assert sorted(factors) == [1.0, 2.0, 2.0]


def test_maskrcnn_and_semantic_rows_are_written_with_their_class_names(run):
    dst, _, _, _ = run
    rows = _read(dst, "annotations").to_pylist()
    sources = {r["source"] for r in rows}
    assert {"maskrcnn", "semantic", "grid"} <= sources
    sizes = {r["item_id"]: (r["height"], r["width"]) for r in _read(dst, "images").to_pylist()}
    for row in rows:
        assert row["segmentation"]["size"] == list(sizes[row["item_id"]])  # original pixels
        if row["source"] == "maskrcnn":
            assert row["label"] in TINY_CLASSES and row["label_score"] == pytest.approx(row["proposal_score"])
        if row["source"] == "semantic":
            assert row["label"] in TINY_UNET["classes"]


def test_one_embedding_row_per_image_per_model(run):
    dst, _, _, _ = run
    images = sorted(_read(dst, "images").column("item_id").to_pylist())
    clip = _read(dst, "embeddings")
    dino = _read(dst, "embeddings/dinov2")  # the embeddings table's DINOv2 part (own vector size)
    assert sorted(clip.column("item_id").to_pylist()) == images
    assert sorted(dino.column("item_id").to_pylist()) == images
    assert set(dino.column("model").to_pylist()) == {"tiny://dinov2"}
    vectors = np.asarray(dino.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
