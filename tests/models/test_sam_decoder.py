"""samflow's prompt decoder (samflow.models.sam_decoder) computes what transformers' SamModel
computes, prompt for prompt: points and boxes, one and three masks, chunked and not."""

from __future__ import annotations

import pytest
import torch

from samflow.models.sam_decoder import decode_prompts


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["points", "boxes"])
@pytest.mark.parametrize("chunk", [5, 64])
def test_decoder_equals_sammodel(sam_runner, multimask: bool, prompt: str, chunk: int) -> None:
    model = sam_runner.model
    size = sam_runner.image_size
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2, *model.get_image_wide_positional_embeddings().shape[1:], generator=generator)
    if prompt == "points":
        points = torch.rand(2, 23, 1, 2, generator=generator) * size
        labels = torch.ones(2, 23, 1, dtype=torch.long)
        kwargs = dict(input_points=points, input_labels=labels)
        sparse, dense = model.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None, input_masks=None)
    else:
        corners = torch.rand(2, 23, 2, 2, generator=generator).sort(dim=2).values * size
        boxes = corners.reshape(2, 23, 4)[..., [0, 2, 1, 3]]  # x0 y0 x1 y1
        kwargs = dict(input_boxes=boxes)
        sparse, dense = model.prompt_encoder(input_points=None, input_labels=None, input_boxes=boxes, input_masks=None)
    with torch.inference_mode():
        expected = model(image_embeddings=embeddings, multimask_output=multimask, **kwargs)
        masks, iou = decode_prompts(model, embeddings, sparse, dense, multimask, chunk=chunk)
    assert masks.shape == expected.pred_masks.shape and iou.shape == expected.iou_scores.shape
    torch.testing.assert_close(masks, expected.pred_masks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou, expected.iou_scores, atol=1e-5, rtol=1e-5)
