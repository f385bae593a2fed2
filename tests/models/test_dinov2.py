"""DINOv2 runner on the tiny model: unit CLS embeddings, batching equivalence, patch grid."""

from __future__ import annotations

import json

import torch

from samflow.models.loading.registry import load_model


def test_embeddings_unit_length_and_batch_equals_single_calls(images):
    dino = load_model("dinov2", "tiny://dinov2", device="cpu")
    batch = dino.embed_images(images)
    assert batch.shape == (len(images), dino.dim) and batch.dtype == torch.float32
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(len(images)))
    for i, image in enumerate(images):
        torch.testing.assert_close(batch[i], dino.embed_images([image])[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


def test_patch_features_grid(images):
    dino = load_model("dinov2", "tiny://dinov2", device="cpu")
    grid = dino.patch_features(images)
    side = dino.crop_size // dino.patch_size
    assert grid.shape == (len(images), side, side, dino.dim)
    assert dino.embed_images([]).shape == (0, dino.dim)


def test_directory_with_processor_config(tmp_path, images):
    """Crop and resize sizes come from preprocessor_config.json (int or dict forms)."""
    tiny = load_model("dinov2", "tiny://dinov2", device="cpu")
    tiny.model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32, "size": {"shortest_edge": 40}}))
    loaded = load_model("dinov2", str(tmp_path), device="cpu")
    assert (loaded.crop_size, loaded.resize_to) == (32, 40)
    assert loaded.embed_images(images[:2]).shape == (2, tiny.dim)
