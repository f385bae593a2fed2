"""A second embedding model (stages.embed.models: [clip, dinov2]): one embeddings table with one
row per image per model, split by model (CLIP in embeddings/, DINOv2 in embeddings/dinov2/),
committed exactly once, and indexed / deduplicated per model (no Ray: synthetic committed shards)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from samflow.cli.main import main
from samflow.config import StorageConfig
from samflow.index.commands import dedup
from samflow.index.dedup import DedupParams
from samflow.index.updates import build_index
from samflow.schemas import tables
from samflow.schemas.rows import build_tables
from samflow.store.catalog import Catalog
from tests.helpers.index_data import clustered, write_image_shard

CLIP_DIM, DINO_DIM = 16, 24


def _batch(n: int, failed: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "uri": np.array([f"s3://src/{i}.png" for i in range(n)], dtype=object),
        "item_id": np.array([f"item-{i}" for i in range(n)], dtype=object),
        "frame_index": np.zeros(n, np.int64), "timestamp_s": np.full(n, np.nan),
        "width": np.full(n, 64), "height": np.full(n, 48),
        "error_type": np.array(["DecodeError" if i == failed else "" for i in range(n)], dtype=object),
        "error_stage": np.array(["decode" if i == failed else "" for i in range(n)], dtype=object),
        "error_message": np.array(["bad" if i == failed else "" for i in range(n)], dtype=object),
        "embedding": rng.standard_normal((n, CLIP_DIM)).astype(np.float32),
        "embedding_dinov2": rng.standard_normal((n, DINO_DIM)).astype(np.float32),
        "embedding_dinov2_model": np.array(["tiny://dinov2"] * n, dtype=object),
    }


def test_the_writer_gives_one_row_per_image_per_model_split_by_model():
    out = build_tables(_batch(4, failed=2), "run-1", embed_model="tiny://clip")
    clip, dino = out["embeddings"], out[tables.embeddings_table("dinov2")]
    assert tables.embeddings_table("dinov2") == "embeddings/dinov2"
    assert clip.schema.equals(tables.embeddings_schema(CLIP_DIM))
    assert dino.schema.equals(tables.embeddings_schema(DINO_DIM))  # same columns, its own vector size
    healthy = ["item-0", "item-1", "item-3"]
    assert clip.column("item_id").to_pylist() == dino.column("item_id").to_pylist() == healthy
    assert set(clip.column("model").to_pylist()) == {"tiny://clip"}
    assert set(dino.column("model").to_pylist()) == {"tiny://dinov2"}
    with pytest.raises(ValueError, match="unknown embedding model"):
        tables.embeddings_table("siglip2")


def test_dinov2_files_commit_with_their_shard_and_uncommitted_ones_are_removed(tmp_path):
    dst = str(tmp_path / "run")
    vectors = clustered(6, CLIP_DIM, seed=1)
    write_image_shard(dst, "kept", vectors, first=0, more={"embeddings/dinov2": clustered(6, DINO_DIM, seed=2)})
    stray = tmp_path / "run/embeddings/dinov2/killed.parquet"  # a run killed before this shard's marker
    pq.write_table(pq.read_table(tmp_path / "run/embeddings/dinov2/kept.parquet"), stray)
    catalog = Catalog(dst, StorageConfig())
    removed = catalog.remove_uncommitted(catalog.committed_shards())
    assert removed == [str(stray)]
    dino = catalog.read_table("embeddings/dinov2")
    clip = catalog.read_table("embeddings")  # CLIP's readers see CLIP's rows only, as before
    assert dino.num_rows == clip.num_rows == 6
    assert dino.schema.field("embedding").type.list_size == DINO_DIM
    assert clip.schema.field("embedding").type.list_size == CLIP_DIM


def _planted(n: int, dim: int, seed: int, copies: list[tuple[int, int]]) -> np.ndarray:
    vectors = clustered(n, dim, seed=seed, clusters=4, spread=0.9)
    rng = np.random.default_rng(seed)
    for original, copy in copies:
        noise = rng.standard_normal(dim).astype(np.float32)
        vectors[copy] = vectors[original] + 0.03 * noise / np.linalg.norm(noise)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("dino_table", ["embeddings/dinov2", "embeddings_dinov2"])
def test_index_and_dedup_use_the_chosen_models_vectors(tmp_path, capsys, dino_table):
    """Near copies planted only in the DINOv2 vectors: dedup --model dinov2 finds them, CLIP's
    dedup (distinct vectors) does not; each model gets its own index. ``embeddings_dinov2`` is
    where outputs written before the split kept DINOv2 rows: still read."""
    copies = [(3, 40), (7, 41), (12, 42)]
    clip = clustered(60, CLIP_DIM, seed=5, clusters=4, spread=1.2)
    dino = _planted(60, DINO_DIM, seed=6, copies=copies)
    dst = str(tmp_path / "run")
    uris = [str(tmp_path / f"src/{i}.jpg") for i in range(60)]  # not there: no byte duplicates
    write_image_shard(dst, "a", clip[:30], first=0, uris=uris[:30], more={dino_table: dino[:30]})
    write_image_shard(dst, "b", clip[30:], first=30, uris=uris[30:], more={dino_table: dino[30:]})

    assert main(["index", "build", dst, "--model", "dinov2"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["embedding_model"] == "dinov2" and manifest["model"] is None  # no run manifest here
    assert manifest["dim"] == DINO_DIM and manifest["count"] == 60
    assert json.loads((tmp_path / "run/_index/image-dinov2/manifest.json").read_text())["dim"] == DINO_DIM
    assert build_index(dst)["dim"] == CLIP_DIM  # CLIP's index: its own folder, untouched by the other

    params = DedupParams(cluster_size=20)
    dino_summary = dedup(dst, threshold=0.95, model="dinov2", params=params)
    clip_summary = dedup(dst, threshold=0.95, params=params)
    assert dino_summary["output"].endswith("dedup/image-dinov2.parquet")
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "run/dedup/image-dinov2.parquet").to_pylist()}
    dropped = {i for i, r in rows.items() if not r["keep"]}
    assert len(dropped) == len(copies) and all(len(dropped & {a, b}) == 1 for a, b in copies)
    assert clip_summary["dropped"] == 0
    assert pq.read_table(tmp_path / "run/dedup/image.parquet").num_rows == 60


def test_model_user_errors_exit_2_with_one_line(tmp_path, capsys):
    dst = str(tmp_path / "run")
    write_image_shard(dst, "a", clustered(8, CLIP_DIM, seed=1), first=0,
                      more={"embeddings/dinov2": clustered(8, DINO_DIM, seed=2)})
    assert main(["index", "build", dst, "--kind", "mask", "--model", "dinov2"]) == 2
    assert "per image only" in capsys.readouterr().err
    assert main(["search", dst, "--model", "dinov2", "--text", "a cat"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--model dinov2" in err and "\n" not in err  # no index yet: says how to build it
    assert main(["index", "build", dst, "--model", "dinov2"]) == 0
    capsys.readouterr()
    assert main(["search", dst, "--model", "dinov2", "--text", "a cat"]) == 2
    assert "no text tower" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["dedup", dst, "--model", "siglip"])
    assert exit_info.value.code == 2


def test_an_output_without_dinov2_vectors_says_so(tmp_path, capsys):
    dst = str(tmp_path / "run")
    write_image_shard(dst, "a", clustered(8, CLIP_DIM, seed=1), first=0)
    assert main(["dedup", dst, "--model", "dinov2"]) == 2
    assert "no vectors" in capsys.readouterr().err
