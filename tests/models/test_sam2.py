"""SAM 2 image runner (same contract as SAM) and video propagation on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.loading.registry import ModelLoadError, load_model
from samflow.models.sam2.runner import load_sam2_video
from tests.helpers.synthetic import smooth_image


@pytest.fixture(scope="module")
def sam2():
    return load_model("sam2", "tiny://sam2", device="cpu")


def test_encode_batch_equals_single_calls(sam2, images):
    batch = sam2.encode(images)
    assert len(batch) == len(images) and len(batch.high_res_features) == 2
    for i, image in enumerate(images):
        single = sam2.encode([image])
        torch.testing.assert_close(batch.embeddings[i], single.embeddings[0], atol=1e-4, rtol=1e-4)
        for level_b, level_s in zip(batch.high_res_features, single.high_res_features):
            torch.testing.assert_close(level_b[i], level_s[0], atol=1e-4, rtol=1e-4)
        assert batch.original_sizes[i] == image.shape[:2]


@pytest.mark.parametrize("prompt", ["points", "boxes"])
def test_decode_batch_equals_single_calls(sam2, images, prompt):
    enc = sam2.encode(images)
    indices = [2, 1]
    if prompt == "points":
        prompts = torch.tensor([[[10.0, 20.0], [70.0, 40.0]], [[5.0, 90.0], [50.0, 10.0]]])
    else:
        prompts = torch.tensor([[[5.0, 5.0, 40.0, 30.0], [20, 10, 79, 47]], [[0.0, 0, 59, 99], [10, 50, 30, 90]]])
    logits, iou = sam2.decode(enc, indices, **{prompt: prompts})
    assert logits.shape[:3] == (2, 2, 3) and iou.shape == (2, 2, 3)
    for row, i in enumerate(indices):
        one_logits, one_iou = sam2.decode(sam2.encode([images[i]]), [0], **{prompt: prompts[row : row + 1]})
        torch.testing.assert_close(logits[row], one_logits[0], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(iou[row], one_iou[0], atol=1e-3, rtol=1e-3)


def test_single_mask_output_and_original_resolution(sam2, images):
    enc = sam2.encode(images)
    logits, iou = sam2.decode(enc, [1], boxes=torch.tensor([[[10.0, 20.0, 40.0, 60.0]]]), multimask_output=False)
    assert logits.shape[:3] == (1, 1, 1) and iou.shape == (1, 1, 1)
    assert sam2.postprocess_masks(logits[0], enc, 1).shape == (1, 1, 100, 60)


def test_prompts_are_in_original_pixel_frame(sam2, images):
    small = images[0]
    large = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    enc = sam2.encode([small, large])
    points = torch.tensor([[[20.0, 10.0], [60.0, 30.0]]])
    a, _ = sam2.decode(enc, [0], points=points)
    b, _ = sam2.decode(enc, [1], points=points * 2)
    c, _ = sam2.decode(enc, [1], points=points)
    assert (a - b).abs().mean() < 0.2 * (a - c).abs().mean()


def test_video_propagation_tracks_objects_through_frames():
    video = load_sam2_video("tiny://sam2", device="cpu")
    frames = [smooth_image(48, 80, seed) for seed in range(3)]
    session = video.start_session(frames)
    masks = np.zeros((2, 48, 80), bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 20:40, 40:70] = True
    first = video.add_masks(session, frame_idx=0, obj_ids=[3, 5], masks=masks)
    assert first.shape == (2, 48, 80)
    assert ((first > 0).numpy() == masks).mean() > 0.95  # a mask prompt conditions its own frame
    seen = []
    for frame_idx, obj_ids, logits in video.propagate(session):
        assert obj_ids == [3, 5] and logits.shape == (2, 48, 80)
        assert torch.isfinite(logits).all()
        seen.append(frame_idx)
    assert seen == [0, 1, 2]
    with pytest.raises(ValueError):
        video.start_session([frames[0], smooth_image(40, 40, 9)])


def test_video_loader_errors_are_model_load_errors():
    with pytest.raises(ModelLoadError, match="tiny://sam2"):
        load_sam2_video("tiny://sam")


def test_video_checkpoint_serves_the_image_runner(tmp_path):
    """Published SAM 2 checkpoints are video models; the image runner loads their image part."""
    from samflow.models.loading.check import check_model

    video = load_sam2_video("tiny://sam2", device="cpu")
    video.model.save_pretrained(tmp_path)
    image = load_model("sam2", str(tmp_path), device="cpu")
    assert type(image.model).__name__ == "Sam2Model"
    video_state = video.model.state_dict()
    for key, tensor in image.model.vision_encoder.state_dict().items():
        assert torch.equal(tensor, video_state[f"vision_encoder.{key}"])
    assert check_model(str(tmp_path))["family"] == "sam2"
