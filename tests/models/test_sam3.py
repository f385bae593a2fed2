"""SAM 3 runner on tiny://sam3: many prompts per image in one pass, images batched, the vision
encoder once per image, text once per runner, thresholds and per-prompt duplicate removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from samflow.models.amg.boxes import box_iou
from samflow.models.loading.registry import ModelLoadError, load_model
from samflow.models.sam3.masks import ImageTerms

PROMPTS = ["cat", "dog", "traffic cone"]


@pytest.fixture(scope="module")
def sam3():
    return load_model("sam3", "tiny://sam3", device="cpu")


def _count_calls(module: torch.nn.Module) -> tuple[list[int], object]:
    """Batch sizes of every forward call of ``module`` (and the hook handle to remove)."""
    sizes: list[int] = []

    def hook(_module, args, kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        first = first[0] if isinstance(first, (list, tuple)) else first
        sizes.append(int(first.shape[0]))

    return sizes, module.register_forward_pre_hook(hook, with_kwargs=True)


def _same(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
    ma, mb = a.masks(), b.masks()
    if len(a):
        disagree = (ma != mb).sum(axis=(1, 2)) / np.maximum((ma | mb).sum(axis=(1, 2)), 1)
        assert disagree.max() < 0.01  # bilinear borders may flip a pixel under float reordering


def test_batch_of_images_and_prompts_equals_one_at_a_time(sam3, images):
    found = sam3.segment(images, PROMPTS, score_thresh=0.0, max_instances=6)
    assert len(found) == len(images) and all(len(per) == len(PROMPTS) for per in found)
    for i, image in enumerate(images):
        for p, prompt in enumerate(PROMPTS):
            alone = sam3.segment([image], [prompt], score_thresh=0.0, max_instances=6)[0][0]
            assert len(alone) > 0
            _same(found[i][p], alone)
            assert found[i][p].segmentations[0]["size"] == list(image.shape[:2])


def test_vision_encoder_runs_once_per_image_and_text_once_per_runner(images):
    runner = load_model("sam3", "tiny://sam3", device="cpu")
    vision, vision_hook = _count_calls(runner.model.vision_encoder)
    text, text_hook = _count_calls(runner.model.text_encoder)
    heads, heads_hook = _count_calls(runner.model.detr_encoder)
    try:
        vocabulary = [f"thing {k}" for k in range(8)]
        runner.pairs_per_decode = 12
        runner.segment(images, vocabulary, score_thresh=0.0)
        assert vision == [len(images)]  # one call, every image once
        assert text == [len(vocabulary)]
        assert sum(heads) == len(images) * len(vocabulary)  # the prompt-conditioned part runs per pair
        assert max(heads) <= 12
        runner.segment(images[:2], vocabulary[::-1], score_thresh=0.0)
        assert vision == [len(images), 2] and text == [len(vocabulary)]  # vocabulary cached
    finally:
        for handle in (vision_hook, text_hook, heads_hook):
            handle.remove()


def test_score_threshold_and_cap(sam3, images):
    everything = sam3.segment(images[:2], PROMPTS, score_thresh=0.0, max_instances=100)
    scores = np.concatenate([inst.scores for per in everything for inst in per])
    thresh = float(np.median(scores))
    kept = sam3.segment(images[:2], PROMPTS, score_thresh=thresh, max_instances=100)
    capped = sam3.segment(images[:2], PROMPTS, score_thresh=0.0, max_instances=2)
    for all_, some, top in zip(sum(everything, []), sum(kept, []), sum(capped, [])):
        assert np.all(some.scores > thresh)
        assert np.all(np.diff(all_.scores) <= 0)  # best first
        # greedy NMS suppresses only from better boxes: thresholding keeps the same prefix
        np.testing.assert_allclose(some.scores, all_.scores[all_.scores > thresh])
        assert len(top) == min(2, len(all_))
        np.testing.assert_allclose(top.scores, all_.scores[:2])
    assert 0 < sum(len(i) for i in sum(kept, [])) < len(scores)


def test_mask_threshold_shrinks_masks(sam3, images):
    low = sam3.segment(images[:1], PROMPTS[:1], score_thresh=0.0, mask_thresh=0.3)[0][0]
    high = sam3.segment(images[:1], PROMPTS[:1], score_thresh=0.0, mask_thresh=0.6)[0][0]
    low_masks = {float(s): m for s, m in zip(low.scores, low.masks())}
    shrunk = 0
    for score, mask in zip(high.scores, high.masks()):
        wide = low_masks[float(score)]
        assert not (mask & ~wide).any()  # a higher threshold never adds pixels
        shrunk += int(wide.sum() - mask.sum())
    assert shrunk > 0
    np.testing.assert_array_equal(high.areas, high.masks().sum(axis=(1, 2)))
    with pytest.raises(ValueError, match="mask_thresh"):
        sam3.segment(images[:1], PROMPTS, mask_thresh=1.5)


def test_duplicates_removed_within_a_prompt_not_across(sam3, images):
    loose = sam3.segment(images[:1], ["cat"], score_thresh=0.0, nms_iou=1.0)[0][0]
    strict = sam3.segment(images[:1], ["cat"], score_thresh=0.0, nms_iou=0.3)[0][0]
    assert len(strict) < len(loose)
    iou = box_iou(torch.as_tensor(strict.boxes), torch.as_tensor(strict.boxes)).fill_diagonal_(0)
    assert float(iou.max()) <= 0.3
    twice = sam3.segment(images[:1], ["cat", "cat"], score_thresh=0.0, nms_iou=0.3)[0]
    _same(twice[0], strict)  # the same concept under another prompt slot suppresses nothing
    _same(twice[1], strict)


def test_output_sizes_set_the_mask_frame(sam3, images):
    image = images[0]
    h, w = image.shape[:2]
    found = sam3.segment([image], PROMPTS[:1], score_thresh=0.0, output_sizes=[(h // 2, w // 2)])[0][0]
    assert found.masks().shape[1:] == (h // 2, w // 2)
    assert found.boxes[:, 2].max() <= w // 2 and found.boxes[:, 3].max() <= h // 2


def test_gated_hub_model_says_accept_licence_and_token(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_TOKEN"):
        load_model("sam3", "facebook/sam3", device="cpu")


def test_random_sam3_is_the_published_architecture():
    from samflow.models.sam3.tiny import reference_sam3_config

    config = reference_sam3_config()
    assert config.vision_config.backbone_config.num_hidden_layers == 32
    assert config.vision_config.image_size == 1008
    assert config.text_config.hidden_size == 1024


def test_exemplar_boxes_prompt_only_their_concept(images):
    runner = load_model("sam3", "tiny://sam3", device="cpu")
    before = runner.segment(images[:2], PROMPTS, score_thresh=0.0, max_instances=4)
    runner.set_exemplars({"dog": [(images[1], np.array([[5, 5, 30, 40], [10, 50, 50, 90]]))]})
    vision, hook = _count_calls(runner.model.vision_encoder)
    try:
        after = runner.segment(images[:2], PROMPTS, score_thresh=0.0, max_instances=4)
    finally:
        hook.remove()
    assert vision == [2]  # exemplar tokens were encoded once, at set_exemplars
    for i in range(2):
        _same(before[i][0], after[i][0])  # other concepts: same results (their padding is masked)
        _same(before[i][2], after[i][2])
        assert not np.allclose(before[i][1].scores, after[i][1].scores)
    runner.set_exemplars({})
    _same(runner.segment(images[:1], ["dog"], score_thresh=0.0, max_instances=4)[0][0], before[0][1])
    with pytest.raises(ValueError, match="at least one box"):
        runner.set_exemplars({"dog": [(images[0], np.zeros((0, 4)))]})


def _every_level(vision, image_index: torch.Tensor):
    """transformers' vision input for pairs: every FPN level copied to every pair (what the
    runner avoids), the last level a placeholder the detector drops."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    hidden = tuple(h.index_select(0, image_index) for h in vision.hidden)
    positions = tuple(p[:1].expand(len(image_index), *p.shape[1:]) for p in vision.positions)
    return Sam3VisionEncoderOutput(fpn_hidden_states=(*hidden, hidden[-1]), fpn_position_encoding=(*positions, positions[-1]))


def _forward(sam3, vision, image_index: torch.Tensor, features: torch.Tensor, mask: torch.Tensor):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    with torch.inference_mode():
        return sam3.model(vision_embeds=_every_level(vision, image_index),
                          text_embeds=BaseModelOutputWithPooling(pooler_output=features), attention_mask=mask)


def test_split_heads_match_transformers_forward(sam3, images):
    """The runner's detect / mask steps give what Sam3Model.forward gives for the same pairs."""
    vision = sam3.encode_images(images[:2])
    text = sam3.encode_texts(PROMPTS[:2])
    image_index = [0, 0, 1, 1]
    prompt_index = torch.tensor([0, 1, 0, 1])
    features, mask = text.features[prompt_index], text.mask[prompt_index]
    reference = _forward(sam3, vision, torch.tensor(image_index), features, mask)
    with torch.inference_mode():
        detection = sam3._detect(vision.pairs(image_index), features, mask)
        every_query = [torch.arange(reference.pred_masks.shape[1])] * 4
        logits = sam3._mask_logits(detection, ImageTerms(sam3._mask_head, vision.hidden), image_index, features, mask,
                                   [0, 1, 2, 3], every_query)
        some = sam3._mask_logits(detection, ImageTerms(sam3._mask_head, vision.hidden), image_index, features, mask,
                                 [1, 3], [torch.tensor([2, 0]), torch.tensor([5])])
    scores = reference.pred_logits.sigmoid() * reference.presence_logits.sigmoid()
    torch.testing.assert_close(detection["scores"], scores)
    torch.testing.assert_close(detection["boxes"], reference.pred_boxes)
    # the factored mask head (sam3_masks) is the same maths in another order: equal to rounding
    torch.testing.assert_close(torch.stack(logits), reference.pred_masks, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(some[0], reference.pred_masks[1, [2, 0]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(some[1], reference.pred_masks[3, [5]], rtol=1e-4, atol=1e-4)


def test_pairs_get_the_coarsest_level_only_and_share_it_within_an_image(sam3, images):
    vision = sam3.encode_images(images[:2])
    one_image = vision.pairs([1, 1, 1])
    assert one_image.coarse.shape == (3, *vision.hidden[-1].shape[1:])
    assert one_image.coarse.stride(0) == 0  # a view of image 1's row, not three copies
    torch.testing.assert_close(one_image.coarse[2], vision.hidden[-1][1])
    mixed = vision.pairs([0, 1, 1])
    torch.testing.assert_close(mixed.coarse, vision.hidden[-1][[0, 1, 1]])
    assert mixed.position.stride(0) == 0


@pytest.mark.parametrize("pairs_per_decode", [4, 16])
def test_segment_equals_transformers_forward_pair_by_pair(images, pairs_per_decode):
    """segment's shared features (coarsest level per pair, mask-head terms per image) give the
    instances that transformers' forward gives on fully copied features, one pair at a time, for
    chunks within one image (16) and across images (4 pairs: 3 prompts do not divide them)."""
    runner = load_model("sam3", "tiny://sam3", device="cpu")
    runner.pairs_per_decode = pairs_per_decode
    score_thresh, mask_thresh, cap, nms_iou = 0.0, 0.5, 5, 0.5  # tiny weights score low: keep all
    found = runner.segment(images[:3], PROMPTS, score_thresh=score_thresh, mask_thresh=mask_thresh,
                           max_instances=cap, nms_iou=nms_iou)
    vision = runner.encode_images(images[:3])
    text = runner.encode_texts(PROMPTS)
    compared = 0
    for i, image in enumerate(images[:3]):
        h, w = image.shape[:2]
        for p in range(len(PROMPTS)):
            out = _forward(runner, vision, torch.tensor([i]), text.features[p:p + 1], text.mask[p:p + 1])
            scores = (out.pred_logits.sigmoid() * out.presence_logits.sigmoid())[0]
            boxes = (out.pred_boxes[0] * torch.tensor([w, h, w, h])).clamp(min=0)
            boxes = torch.minimum(boxes, torch.tensor([w, h, w, h], dtype=boxes.dtype))
            above = (scores > score_thresh).nonzero().squeeze(1)
            order = above[torchvision.ops.nms(boxes[above], scores[above], nms_iou)][:cap]
            masks = F.interpolate(out.pred_masks[0, order][None], size=(h, w), mode="bilinear",
                                  align_corners=False)[0].sigmoid() > mask_thresh
            nonempty = masks.flatten(1).any(dim=1)
            got = found[i][p]
            assert len(got) == int(nonempty.sum())
            np.testing.assert_allclose(got.scores, scores[order][nonempty].numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got.boxes, boxes[order][nonempty].numpy(), atol=1e-2)
            expected = masks[nonempty].numpy()
            if len(got):
                disagree = (got.masks() != expected).sum(axis=(1, 2)) / np.maximum((got.masks() | expected).sum(axis=(1, 2)), 1)
                assert disagree.max() < 0.01  # bilinear borders may flip a pixel under float reordering
            compared += len(got)
    assert compared >= 2 * 9  # instances in every pair: the comparison is not vacuous


def test_mask_decoder_runs_only_for_pairs_with_instances(images):
    runner = load_model("sam3", "tiny://sam3", device="cpu")
    calls, hook = _count_calls(runner.model.mask_decoder.prompt_cross_attn_norm)  # once per decoded pair
    try:
        found = runner.segment(images[:2], PROMPTS, score_thresh=0.99)
        assert calls == [] and all(len(i) == 0 for per in found for i in per)
        runner.segment(images[:2], PROMPTS, score_thresh=0.0)
        assert sum(calls) == 2 * len(PROMPTS)
    finally:
        hook.remove()
