"""img2dataset's three output layouts and a Hugging Face dataset's Parquet are read as what they
are: their stats, per-shard metadata Parquet, sidecars and dataset card are neither inputs nor
errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from samflow.config import load_config
from samflow.inputs.parquet import ParquetKeys
from samflow.inputs.plan import resolve_source
from samflow.inputs.webdataset import TarKeys
from tests.helpers.cli_process import samflow
from tests.helpers.cli_summary import summary_of
from tests.helpers.img2dataset import samples, write_hf_parquet, write_img2dataset

FAILED = {1}  # the second sample of the first shard failed to download


def _shards() -> list:
    rng = np.random.default_rng(11)
    return [samples(0, 3, FAILED, rng), samples(1, 2, set(), rng)]


def _keys(reader: type, uris: list[str]) -> list[dict]:
    return reader(load_config().storage)(pa.table({"uri": uris})).to_pylist()


@pytest.mark.parametrize("layout", ["files", "webdataset", "parquet"])
def test_img2dataset_output_is_detected_and_its_metadata_left_out(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "out"
    shards = _shards()
    downloaded = write_img2dataset(folder, layout, shards)
    listed = sorted(str(p) for p in folder.rglob("*") if p.is_file())

    source = resolve_source(str(folder), load_config(), str(tmp_path / "annotated"))
    chosen = [uri for uri, _ in source.files]
    assert source.format == layout
    assert source.excluded == len(listed) - len(chosen)
    assert not any(uri.endswith(("_stats.json", ".txt", ".json")) for uri in chosen)
    if layout == "files":
        assert chosen == sorted(str(folder / key[:5] / f"{key}.jpg") for key in downloaded)
    elif layout == "webdataset":
        assert chosen == [str(folder / "00000.tar"), str(folder / "00001.tar")]
        keys = _keys(TarKeys, chosen)
        assert [row["key"] for row in keys] == [f"{folder / key[:5]}.tar#{key}.jpg" for key in downloaded]
        assert not any(row["error_type"] for row in keys)
    else:
        assert chosen == [str(folder / "00000.parquet"), str(folder / "00001.parquet")]
        keys = _keys(ParquetKeys, chosen)
        # every row is an input; a failed download's row (no bytes) becomes an error row in a run
        assert [row["key"] for row in keys] == [f"{folder / s.key[:5]}.parquet#{s.key}" for shard in shards for s in shard]


def test_hugging_face_parquet_with_an_image_struct(tmp_path: Path) -> None:
    rows = write_hf_parquet(tmp_path / "ds", {"train": 3, "test": 2}, np.random.default_rng(5))
    source = resolve_source(str(tmp_path / "ds"), load_config(), str(tmp_path / "annotated"))
    assert source.format == "parquet" and source.excluded == 1  # README.md, the dataset card
    keys = _keys(ParquetKeys, [uri for uri, _ in source.files])
    assert len(keys) == rows and not any(row["error_type"] for row in keys)


@pytest.mark.slow
def test_annotate_img2dataset_webdataset_output_from_the_command_line(tmp_path: Path) -> None:
    shards = _shards()
    downloaded = write_img2dataset(tmp_path / "laion", "webdataset", shards)
    done = samflow("annotate", "laion", "--out", "annotated", "--profile", "tiny",
                   "--set", "stages.embed.enabled=false", cwd=tmp_path)
    counts = summary_of(done.stdout)["counts"]
    assert counts["inputs"] == counts["images"] == len(downloaded) and counts["errors"] == 0
    images = pq.read_table(tmp_path / "annotated" / "images").to_pylist()
    by_key = {row["uri"].rsplit("#", 1)[1][: -len(".jpg")]: json.loads(row["meta_json"]) for row in images}
    assert sorted(by_key) == sorted(downloaded)
    assert all(meta["key"] == key and meta["status"] == "success" for key, meta in by_key.items())
