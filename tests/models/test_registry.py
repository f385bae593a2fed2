"""Registry: URI parsing, device/dtype choice, HF-directory loading through the real path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from samflow.models.checkpoint import sha256_file
from samflow.models.registry import ModelLoadError, load_model, parse_uri


def test_parse_uri_kinds(tmp_path):
    assert parse_uri("tiny://sam").kind == "tiny"
    assert parse_uri("random://clip").kind == "random" and parse_uri("random://clip").in_code
    assert parse_uri("hf://facebook/sam-vit-base").location == "facebook/sam-vit-base"
    assert parse_uri("facebook/sam-vit-base").kind == "hub"
    assert parse_uri(str(tmp_path)).kind == "local"
    assert parse_uri(f"file://{tmp_path}").location == str(tmp_path)


def test_cpu_runs_fp32():
    runner = load_model("clip", "tiny://clip")
    assert runner.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if runner.device.type == "cpu":
        assert runner.dtype == torch.float32


@pytest.mark.parametrize(
    "family, uri, needle",
    [
        ("nope", "tiny://nope", "unknown model family"),
        ("sam", "tiny://clip", "tiny://sam"),
        ("sam", "/does/not/exist", "tiny://"),
        ("clip", "s3://bucket/model", "local"),
    ],
)
def test_bad_requests_fail_with_actionable_message(family, uri, needle):
    with pytest.raises(ModelLoadError, match=needle):
        load_model(family, uri)


def test_directory_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weight files"):
        load_model("sam", str(tmp_path))


def test_sam_directory_round_trip_matches_tiny(tmp_path, images):
    tiny = load_model("sam", "tiny://sam", device="cpu")
    tiny.model.save_pretrained(tmp_path)
    loaded = load_model("sam", str(tmp_path), device="cpu")
    assert loaded.checkpoint_sha256 == sha256_file(tmp_path / "model.safetensors")
    assert loaded.num_parameters == tiny.num_parameters
    assert loaded.model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(loaded.encode(images).embeddings, tiny.encode(images).embeddings)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_clip_directory_round_trip_matches_tiny(tmp_path, images, family):
    from samflow.models.tiny import tiny_tokenizer

    tiny = load_model(family, f"tiny://{family}", device="cpu")
    tiny.model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(family, str(tmp_path), device="cpu")
    torch.testing.assert_close(loaded.embed_images(images), tiny.embed_images(images))
    torch.testing.assert_close(loaded.embed_texts(["a cat"]), tiny.embed_texts(["a cat"]))


def test_empty_batches(images):
    runner = load_model("clip", "tiny://clip", device="cpu")
    assert runner.embed_images([]).shape == (0, runner.dim)
    with pytest.raises(ValueError):
        runner.embed_images([np.zeros((4, 4), np.uint8)])


def test_unreachable_hub_model_fails_with_offline_hint():
    with pytest.raises(ModelLoadError, match="tiny://"):
        load_model("sam", "hf://samflow-test/no-such-model")


def _fake_hub_cache(cache: Path, repo: str, write: Callable[[Path], None]) -> None:
    """The on-disk layout huggingface_hub keeps: refs/main -> snapshots/<commit>/<files>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    write(snapshot)


def test_hub_ids_resolve_from_the_local_cache_offline(tmp_path):
    """hf://org/name loads a cached snapshot with no network; hf://org/name/file one file."""
    tiny = load_model("sam", "tiny://sam", device="cpu")
    esrgan = load_model("realesrgan", "tiny://realesrgan", device="cpu")
    release = {"params_ema": esrgan.model.state_dict()}
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "acme/sam-tiny", lambda d: tiny.model.save_pretrained(d))
    _fake_hub_cache(cache, "acme/esrgan", lambda d: [torch.save(release, d / n) for n in ("x4.pth", "x2.pth")])
    script = (
        "from samflow.models.check import check_model; import json; "
        "print(json.dumps([check_model('hf://acme/sam-tiny'), check_model('hf://acme/esrgan/x4.pth')]))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    sam, upscaler = json.loads(out.stdout.strip().splitlines()[-1])
    assert sam["family"] == "sam" and sam["parameters"] == tiny.num_parameters
    assert upscaler["family"] == "realesrgan" and upscaler["parameters"] == esrgan.num_parameters
