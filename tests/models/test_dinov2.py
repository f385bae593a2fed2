"""DINOv2 runner on the tiny model: unit CLS embeddings, batching equivalence, patch grid."""

from __future__ import annotations

import torch

from samflow.models.registry import load_model


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
