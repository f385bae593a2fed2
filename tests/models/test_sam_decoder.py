"""samflow's prompt decoder (samflow.models.sam.decoder) computes what transformers' SamModel
computes, prompt for prompt: points and boxes, one and three masks, chunked and not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.sam import decoder as sam_decoder
from samflow.models.sam.decoder import decode_prompts


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


@pytest.mark.parametrize("original", [(30, 50), (64, 40), (48, 64), (90, 120)])
def test_postprocess_masks_equals_sams_two_resizes(sam_runner, original) -> None:
    """The composed resize (one matmul per axis) gives SAM's resize-crop-resize logits."""
    import torch.nn.functional as F

    from samflow.models.sam.runner import SamEncoding

    size = sam_runner.image_size
    scale = size / max(original)
    input_size = (int(original[0] * scale + 0.5), int(original[1] * scale + 0.5))
    enc = SamEncoding(torch.zeros(1), [original], [input_size])
    side = sam_runner.low_res_size
    low_res = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(1)) * 4
    flat = low_res.reshape(12, 1, *low_res.shape[-2:])
    padded = F.interpolate(flat, (size, size), mode="bilinear", align_corners=False)
    expected = F.interpolate(padded[..., : input_size[0], : input_size[1]], original, mode="bilinear",
                             align_corners=False).reshape(4, 3, *original)
    got = sam_runner.postprocess_masks(low_res, enc, 0)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("rows_at_once", ["all", "one"])
def test_region_is_the_top_left_of_the_masks(sam_runner, monkeypatch, rows_at_once: str) -> None:
    """Upscaling only some image tokens gives exactly those tokens' mask pixels, whether the
    upscaling runs over all token rows at once or one row at a time (as SAM's size does on a CPU)."""
    if rows_at_once == "one":
        monkeypatch.setitem(sam_decoder.UPSCALE_BLOCK_ELEMENTS, "cpu", 1)
    model = sam_runner.model
    generator = torch.Generator().manual_seed(2)
    embeddings = torch.randn(1, *model.get_image_wide_positional_embeddings().shape[1:], generator=generator)
    points = torch.rand(1, 7, 1, 2, generator=generator) * sam_runner.image_size
    sparse, dense = model.prompt_encoder(input_points=points, input_labels=torch.ones(1, 7, 1, dtype=torch.long),
                                         input_boxes=None, input_masks=None)
    h, w = embeddings.shape[-2:]
    with torch.inference_mode():
        full, iou = decode_prompts(model, embeddings, sparse, dense, True, chunk=3)
        part, part_iou = decode_prompts(model, embeddings, sparse, dense, True, chunk=3, region=(h - 3, w - 1))
    assert part.shape[-2:] == (4 * (h - 3), 4 * (w - 1))
    torch.testing.assert_close(part, full[..., : 4 * (h - 3), : 4 * (w - 1)], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part_iou, iou)
    with pytest.raises(ValueError, match="region"):
        decode_prompts(model, embeddings, sparse, dense, True, region=(h + 1, w))


@pytest.mark.parametrize("original", [(30, 50), (64, 40), (48, 64), (200, 90)])
def test_image_only_logits_post_process_to_the_same_masks(sam_runner, original) -> None:
    """decode(image_only=True) leaves out only pixels that the resize to the image never reads:
    portrait, landscape and larger-than-input images post-process to the same logits."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (*original, 3), dtype=np.uint8)
    enc = sam_runner.encode([image])
    points = torch.as_tensor(rng.uniform(0, 1, (1, 9, 2)) * [original[1], original[0]], dtype=torch.float32)
    full, iou = sam_runner.decode(enc, [0], points=points)
    part, part_iou = sam_runner.decode(enc, [0], points=points, image_only=True)
    assert part.shape[-2] < full.shape[-2] or part.shape[-1] < full.shape[-1]
    torch.testing.assert_close(part_iou, iou)
    torch.testing.assert_close(sam_runner.postprocess_masks(part[0], enc, 0),
                               sam_runner.postprocess_masks(full[0], enc, 0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("original", [(30, 50), (48, 64), (200, 90)])
@pytest.mark.parametrize("masks_at_once", [3, 100])
def test_masks_and_stability_are_the_thresholded_logits_in_any_chunking(sam_runner, monkeypatch, original,
                                                                         masks_at_once) -> None:
    """The engine's CPU post-processing upsamples a few masks at a time: the masks and stability
    scores are those of all logits at once, for a smaller, a model-input-sized and a larger image
    (the upsampler's memory layout differs between them)."""
    from samflow.models.amg import AmgParams, postprocess
    from samflow.models.amg.filters import stability_score
    from samflow.models.sam.runner import SamEncoding

    monkeypatch.setattr(postprocess, "_CPU_UPSAMPLE_MASKS", masks_at_once)
    size = sam_runner.image_size
    scale = size / max(original)
    enc = SamEncoding(torch.zeros(1), [original], [(int(original[0] * scale + 0.5), int(original[1] * scale + 0.5))])
    side = sam_runner.low_res_size
    low_res = torch.randn(10, 1, side, side, generator=torch.Generator().manual_seed(4)) * 4

    def upsample(x):
        return sam_runner.postprocess_masks(x, enc, 0)

    params = AmgParams()
    masks, stability = postprocess._masks_and_stability(low_res, upsample, params)
    logits = upsample(low_res)[:, 0]
    assert torch.equal(masks, logits > params.mask_threshold)
    torch.testing.assert_close(stability, stability_score(logits, params.mask_threshold, params.stability_score_offset))


@pytest.fixture(scope="module")
def sam2_decoder_model():
    """SAM 2 with sam2.1's prompt encoder and mask decoder at full size (64 x 64 image tokens,
    width 256) and random weights; its vision encoder is never run (embeddings are given)."""
    from transformers import Sam2Config, Sam2Model

    from samflow.models.sam2.tiny import _tiny_sam2_parts

    parts = _tiny_sam2_parts(256)
    parts["prompt_encoder_config"] = {}
    parts["mask_decoder_config"] = {}
    torch.manual_seed(0)
    return Sam2Model(Sam2Config(**parts)).eval()


@pytest.mark.parametrize("prompt", ["points", "boxes"])
@pytest.mark.parametrize("chunk", [3, None])
def test_decoder_equals_sam2model(sam2_decoder_model, prompt: str, chunk: int | None) -> None:
    """SAM 2's decoder (object-score token, skip features in the upscaling) through the same
    many-prompt decoder: three masks per prompt, as the mask engine asks."""
    model = sam2_decoder_model
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2, 256, 64, 64, generator=generator)
    high_res = [torch.randn(2, 32, 256, 256, generator=generator), torch.randn(2, 64, 128, 128, generator=generator)]
    if prompt == "points":
        points = torch.rand(2, 7, 1, 2, generator=generator) * 1024
        labels = torch.ones(2, 7, 1, dtype=torch.long)
        kwargs = dict(input_points=points, input_labels=labels)
    else:
        corners = torch.rand(2, 7, 2, 2, generator=generator).sort(dim=2).values * 1024
        kwargs = dict(input_boxes=corners.reshape(2, 7, 4)[..., [0, 2, 1, 3]])
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(input_points=kwargs.get("input_points"),
                                             input_labels=kwargs.get("input_labels"),
                                             input_boxes=kwargs.get("input_boxes"), input_masks=None)
        expected = model(image_embeddings=[*high_res, embeddings], multimask_output=True, **kwargs)
        masks, iou = decode_prompts(model, embeddings, sparse, dense, True, chunk=chunk, high_res=high_res)
    assert masks.shape == expected.pred_masks.shape and iou.shape == expected.iou_scores.shape
    torch.testing.assert_close(masks, expected.pred_masks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou, expected.iou_scores, atol=1e-5, rtol=1e-5)
