"""CLIP / SigLIP runners on tiny models: unit vectors, batching equivalence, zero-shot."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from samflow.models.loading.registry import ModelLoadError, load_model

TEXTS = ["a photo of a cat.", "dog", "a very long description of a red car parked on a street at night"]


def test_image_embeddings_unit_length_and_batch_equals_single(clip_runner, images):
    batch = clip_runner.embed_images(images)
    assert batch.shape == (len(images), clip_runner.dim)
    assert batch.dtype == torch.float32 and batch.device.type == "cpu"
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(len(images)))
    for i, image in enumerate(images):
        torch.testing.assert_close(batch[i], clip_runner.embed_images([image])[0], atol=1e-4, rtol=1e-4)


def test_text_embeddings_unit_length_and_batch_equals_single(clip_runner):
    batch = clip_runner.embed_texts(TEXTS)
    assert batch.shape == (len(TEXTS), clip_runner.dim)
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(len(TEXTS)))
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(batch[i], clip_runner.embed_texts([text])[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)  # different texts, different vectors


def test_zero_shot_ensembles_templates(clip_runner):
    vocabulary = ["cat", "dog", "car", "tree"]
    templates = ["a photo of a {}.", "a drawing of a {}."]
    classes = clip_runner.class_embeddings(vocabulary, templates)
    expected = torch.nn.functional.normalize(
        torch.stack([clip_runner.embed_texts([t.format(v) for t in templates]).mean(0) for v in vocabulary]), dim=-1
    )
    torch.testing.assert_close(classes, expected, atol=1e-5, rtol=1e-5)
    # an image embedding equal to a class vector is labelled with that class
    indices, scores = clip_runner.zero_shot(classes, vocabulary, templates)
    assert indices.tolist() == list(range(len(vocabulary)))
    assert indices.dtype == torch.long and scores.shape == (len(vocabulary),)
    assert bool(((scores > 1 / len(vocabulary)) & (scores <= 1)).all())


def test_zero_shot_on_images(clip_runner, images):
    embeddings = clip_runner.embed_images(images)
    indices, scores = clip_runner.zero_shot(embeddings, ["cat", "dog"], ["a photo of a {}."])
    assert indices.shape == (len(images),) and set(indices.tolist()) <= {0, 1}
    assert bool(((scores >= 0.5) & (scores <= 1)).all())  # max of a 2-way softmax


def test_tiny_models_are_deterministic(clip_runner, images):
    again = load_model(clip_runner.family, clip_runner.uri, device="cpu")
    assert again.checkpoint_sha256 == clip_runner.checkpoint_sha256
    torch.testing.assert_close(again.embed_images(images[:1]), clip_runner.embed_images(images[:1]))


def test_missing_optional_tokenizer_package_is_a_clear_load_error(tmp_path):
    """A SentencePiece SigLIP tokenizer without the package fails as ModelLoadError, not deep inside."""
    if importlib.util.find_spec("sentencepiece") is not None:
        pytest.skip("sentencepiece is installed here")
    load_model("siglip", "tiny://siglip", device="cpu").model.save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "SiglipTokenizer"}))
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="sentencepiece"):
        load_model("siglip", str(tmp_path), device="cpu")
