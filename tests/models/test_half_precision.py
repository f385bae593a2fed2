"""The GPU dtypes (bf16; fp16 for Real-ESRGAN) run the same runner code and stay close to fp32.
Checked on the CPU with the tiny models, so a dtype mismatch cannot hide until a GPU run."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from samflow.models.loading.registry import load_model

BF16 = torch.bfloat16


def test_sam_bf16_close_to_fp32(images):
    full = load_model("sam", "tiny://sam", device="cpu")
    half = load_model("sam", "tiny://sam", device="cpu", dtype=BF16)
    assert half.dtype == BF16 and half.checkpoint_sha256 == full.checkpoint_sha256
    points = torch.tensor([[[10.0, 20.0], [60.0, 30.0]]])
    a, iou_a = full.decode(full.encode(images[:1]), [0], points=points)
    b, iou_b = half.decode(half.encode(images[:1]), [0], points=points)
    assert b.dtype == torch.float32 and iou_b.dtype == torch.float32
    assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.98


def test_clip_bf16_close_to_fp32(images):
    full = load_model("clip", "tiny://clip", device="cpu")
    half = load_model("clip", "tiny://clip", device="cpu", dtype=BF16)
    a, b = full.embed_images(images), half.embed_images(images)
    assert b.dtype == torch.float32
    assert bool(((a * b).sum(-1) > 0.98).all())


def test_owlv2_bf16_boxes_inside_images(images):
    half = load_model("owlv2", "tiny://owlv2", device="cpu", dtype=BF16)
    for (boxes, scores, labels), image in zip(half.detect(images, ["a cat", "a dog"], threshold=0.0), images):
        h, w = image.shape[:2]
        assert boxes.dtype == torch.float32 and bool((boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())


def test_realesrgan_fp16_close_to_fp32(images):
    full = load_model("realesrgan", "tiny://realesrgan", device="cpu")
    half = load_model("realesrgan", "tiny://realesrgan", device="cpu", dtype=torch.float16)
    a = full.upscale(images[3]).astype(int)
    b = half.upscale(images[3], tile=24, overlap=20).astype(int)
    assert b.shape == a.shape and np.abs(a - b).mean() < 1.0
