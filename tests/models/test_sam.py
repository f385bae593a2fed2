"""SAM runner on the tiny model: batching equivalence, prompt frames, mask resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.sam.runner import SamEncoding

ATOL = 1e-4


def test_encode_batch_equals_single_calls(sam_runner, images):
    batch = sam_runner.encode(images)
    assert len(batch) == len(images)
    assert batch.embeddings.shape[0] == len(images)
    for i, image in enumerate(images):
        single = sam_runner.encode([image])
        torch.testing.assert_close(batch.embeddings[i], single.embeddings[0], atol=ATOL, rtol=1e-4)
        assert batch.original_sizes[i] == image.shape[:2]
        assert single.input_sizes[0] == batch.input_sizes[i]
        assert max(batch.input_sizes[i]) == sam_runner.image_size


_SINGLE: dict[int, SamEncoding] = {}


def single_encodings(runner, images, i: int) -> SamEncoding:
    """Encoding of images[i] alone (cached: the decode tests compare against it repeatedly)."""
    if i not in _SINGLE:
        _SINGLE[i] = runner.encode([images[i]])
    return _SINGLE[i]


@pytest.mark.parametrize("prompt", ["points", "boxes"])
@pytest.mark.parametrize("multimask", [True, False])
def test_decode_batch_equals_single_calls(sam_runner, images, prompt, multimask):
    enc = sam_runner.encode(images)
    rng = np.random.default_rng(0)
    indices = [3, 0, 1]
    prompts = []
    for i in indices:
        h, w = images[i].shape[:2]
        if prompt == "points":
            prompts.append(rng.uniform(0, 1, (5, 2)) * [w, h])
        else:
            xy = rng.uniform(0, 0.5, (5, 2)) * [w, h]
            prompts.append(np.concatenate([xy, xy + rng.uniform(0.1, 0.5, (5, 2)) * [w, h]], axis=1))
    prompts = torch.tensor(np.stack(prompts), dtype=torch.float32)
    logits, iou = sam_runner.decode(enc, indices, **{prompt: prompts}, multimask_output=multimask)
    k = 3 if multimask else 1
    assert logits.shape[:3] == (3, 5, k) and iou.shape == (3, 5, k)
    for row, i in enumerate(indices):
        single_enc = single_encodings(sam_runner, images, i)
        one_logits, one_iou = sam_runner.decode(single_enc, [0], **{prompt: prompts[row : row + 1]},
                                                multimask_output=multimask)
        torch.testing.assert_close(logits[row], one_logits[0], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(iou[row], one_iou[0], atol=1e-3, rtol=1e-3)


def test_prompts_are_in_original_pixel_frame(sam_runner, images):
    """The same picture at twice the resolution with prompts scaled by two decodes the same."""
    small = images[0]
    large = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    enc = sam_runner.encode([small, large])
    points = torch.tensor([[[20.0, 10.0], [60.0, 30.0]]])
    a, iou_a = sam_runner.decode(enc, [0], points=points)
    b, iou_b = sam_runner.decode(enc, [1], points=points * 2)
    c, iou_c = sam_runner.decode(enc, [1], points=points)  # NOT rescaled: lands elsewhere
    # both images resize to the same input frame, so only pixel resampling differs between a and
    # b; the misplaced prompt c must differ far more
    assert (a - b).abs().mean() < 0.2 * (a - c).abs().mean()
    assert (iou_a - iou_b).abs().max() < 0.2 * (iou_a - iou_c).abs().max()


def test_postprocess_masks_at_original_resolution_and_crops_padding(sam_runner, images):
    enc = sam_runner.encode(images)
    logits, _ = sam_runner.decode(enc, [1], points=torch.tensor([[[30.0, 50.0]]]))
    masks = sam_runner.postprocess_masks(logits[0], enc, 1)
    assert masks.shape == (1, 3, 100, 60)
    # synthetic low-res logits: +1 over the valid (unpadded) area, -1 over the padding; after
    # post-processing every original pixel must come from the valid area
    for i, image in enumerate(images):
        h_lr, w_lr = logits.shape[-2:]
        h, w = enc.input_sizes[i]
        valid = torch.full((1, 1, h_lr, w_lr), -1.0)
        scale = h_lr / sam_runner.image_size
        valid[..., : int(h * scale), : int(w * scale)] = 1.0
        out = sam_runner.postprocess_masks(valid, enc, i)
        assert out.shape == (1, 1, *image.shape[:2])
        assert (out > 0).float().mean() > 0.95


def test_decode_rejects_bad_prompts(sam_runner, images):
    enc = sam_runner.encode(images[:1])
    with pytest.raises(ValueError):
        sam_runner.decode(enc, [0])
    with pytest.raises(ValueError):
        sam_runner.decode(enc, [0], points=torch.zeros(1, 2, 2), boxes=torch.zeros(1, 2, 4))
    with pytest.raises(ValueError):
        sam_runner.decode(enc, [0], points=torch.zeros(2, 2, 2))


def test_runner_attributes(sam_runner):
    assert sam_runner.family == "sam" and sam_runner.uri == "tiny://sam"
    assert sam_runner.device == torch.device("cpu") and sam_runner.dtype == torch.float32
    assert sam_runner.num_parameters > 0 and len(sam_runner.checkpoint_sha256) == 64
    assert isinstance(sam_runner.encode([np.zeros((8, 8, 3), np.uint8)]), SamEncoding)
