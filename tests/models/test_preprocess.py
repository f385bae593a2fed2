"""Batched torch pre-processing matches the reference (PIL) Hugging Face processors.

Resampling kernels differ slightly between PIL and torch, so agreement is checked in normalised
units (1/255 of the range is ~0.017 after ImageNet / CLIP normalisation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samflow.models.common import preprocess as pp
from tests.helpers.synthetic import smooth_image

CPU = torch.device("cpu")
IMAGES = [smooth_image(300, 500, 0), smooth_image(420, 260, 1)]


def assert_matches(mine: torch.Tensor, reference: torch.Tensor) -> None:
    assert mine.shape == reference.shape
    diff = (mine - reference).abs()
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1


def test_sam_resize_longest_pad_matches_processor():
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    ref = SamImageProcessorPil()(images=IMAGES, return_tensors="pt")
    norm = pp.Normalisation(pp.IMAGENET_MEAN, pp.IMAGENET_STD)
    mine, originals, inputs = pp.resize_longest_pad(IMAGES, 1024, norm, CPU, torch.float32)
    assert_matches(mine, ref["pixel_values"])
    assert inputs == [tuple(s) for s in ref["reshaped_input_sizes"].tolist()]
    assert originals == [tuple(s) for s in ref["original_sizes"].tolist()]


@pytest.mark.parametrize("family", ["clip", "dinov2"])
def test_shortest_side_center_crop_matches_processor(family):
    if family == "clip":
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil as Processor,
        )

        mean, std, resize_to = pp.CLIP_MEAN, pp.CLIP_STD, 224
    else:  # DINOv2 checkpoints use the BiT processor: shortest side 256, crop 224, ImageNet stats
        from transformers.models.bit.image_processing_pil_bit import (
            BitImageProcessorPil as Processor,
        )

        mean, std, resize_to = pp.IMAGENET_MEAN, pp.IMAGENET_STD, 256
    processor = Processor(size={"shortest_edge": resize_to}, crop_size={"height": 224, "width": 224},
                          image_mean=list(mean), image_std=list(std))
    ref = processor(images=IMAGES, return_tensors="pt")["pixel_values"]
    mine = pp.resize_shortest_center_crop(IMAGES, 224, pp.Normalisation(mean, std), CPU, torch.float32,
                                          resize_to=resize_to)
    assert_matches(mine, ref)


def test_siglip_square_resize_matches_processor():
    from transformers.models.siglip.image_processing_pil_siglip import (
        SiglipImageProcessorPil,
    )

    ref = SiglipImageProcessorPil()(images=IMAGES, return_tensors="pt")["pixel_values"]
    mine = pp.resize_square(IMAGES, (224, 224), pp.Normalisation(pp.HALF, pp.HALF), CPU, torch.float32, mode="bicubic")
    assert_matches(mine, ref)


def test_owlv2_pad_square_resize_matches_processor():
    from transformers.models.owlv2.image_processing_pil_owlv2 import (
        Owlv2ImageProcessorPil,
    )

    ref = Owlv2ImageProcessorPil()(images=IMAGES, return_tensors="pt")["pixel_values"]
    mine, originals = pp.pad_square_resize(IMAGES, 960, pp.Normalisation(pp.CLIP_MEAN, pp.CLIP_STD), CPU, torch.float32)
    assert_matches(mine, ref)
    assert originals == [im.shape[:2] for im in IMAGES]


def test_mixed_sizes_batch_equals_one_by_one():
    norm = pp.Normalisation(pp.IMAGENET_MEAN, pp.IMAGENET_STD)
    images = [IMAGES[0], IMAGES[1], IMAGES[0][:, ::-1].copy()]
    batch, _, _ = pp.resize_longest_pad(images, 128, norm, CPU, torch.float32)
    for i, image in enumerate(images):
        one, _, _ = pp.resize_longest_pad([image], 128, norm, CPU, torch.float32)
        torch.testing.assert_close(batch[i], one[0])
    with pytest.raises(ValueError):
        pp.to_device([np.zeros((4, 4, 4), np.uint8)], CPU)
