"""Registry: URI parsing, device/dtype choice, HF-directory loading through the real path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.loading.checkpoint import sha256_file
from samflow.models.loading.registry import ModelLoadError, load_model, parse_uri


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
    ],
)
def test_bad_requests_fail_with_actionable_message(family, uri, needle):
    with pytest.raises(ModelLoadError, match=needle):
        load_model(family, uri)


def test_missing_object_store_model_fails_with_its_uri(s3_server, tmp_path, monkeypatch):
    """load_model fetches a remote model through the model cache; a missing one names the URI."""
    monkeypatch.setenv("SAMFLOW_MODEL_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="could not fetch s3://no-such-bucket/model"):
        load_model("clip", "s3://no-such-bucket/model")


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
    from samflow.models.common.tiny_text import tiny_tokenizer

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

