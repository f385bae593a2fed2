"""SAM's simulated prompts on plain tensors, and `samflow train`'s one-line refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from samflow.train.losses import mask_iou, sam_loss
from samflow.train.prompts import (
    centre_point,
    corrective_points,
    first_prompts,
    mask_boxes,
)

REPO = Path(__file__).resolve().parents[2]
SIDE, IMAGE = 16, 64  # a 16 x 16 low-res frame over a 64-px input: 4 input pixels per mask pixel


def _square(y0: int, x0: int, size: int) -> torch.Tensor:
    mask = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    return mask


def test_a_point_prompt_lies_inside_its_mask_and_a_box_prompt_around_it():
    masks = torch.stack([_square(2, 3, 4), _square(9, 8, 6)])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        points = first_prompts(masks, False, IMAGE, 0.1, generator).points[:, 0]
        yx = (points.flip(1) / (IMAGE / SIDE)).long()
        assert masks[torch.arange(2), yx[:, 0], yx[:, 1]].all()
    assert mask_boxes(masks, IMAGE / SIDE).tolist() == [[12, 8, 28, 24], [32, 36, 56, 60]]
    boxes = first_prompts(masks, True, IMAGE, 0.1, generator).boxes
    assert (boxes >= 0).all() and (boxes <= IMAGE).all() and (boxes[:, 2:] > boxes[:, :2]).all()


def test_a_corrective_click_is_positive_on_a_miss_and_negative_on_a_spill():
    truth = torch.stack([_square(2, 2, 6), _square(2, 2, 6)])
    predicted = torch.stack([_square(2, 2, 3), _square(0, 0, 12)])  # the first misses, the second spills
    points, labels = corrective_points(predicted, truth, IMAGE, torch.Generator().manual_seed(1))
    assert labels.tolist() == [1, 0]
    yx = (points.flip(1) / (IMAGE / SIDE)).long()
    assert (predicted ^ truth)[torch.arange(2), yx[:, 0], yx[:, 1]].all()  # on the error region


def test_the_centre_point_is_inside_even_a_ring():
    ring = _square(2, 2, 12) & ~_square(5, 5, 6)
    y, x = (centre_point(ring[None], IMAGE)[0].flip(0) / (IMAGE / SIDE)).long().tolist()
    assert ring[y, x]


def test_the_loss_trains_the_best_of_three_outputs_and_scores_the_iou_head():
    truth = _square(4, 4, 6)[None]
    perfect = torch.where(truth, 20.0, -20.0)
    logits = torch.stack([-perfect, perfect, torch.zeros_like(perfect)], dim=1)  # (1, 3, H, W)
    loss, best = sam_loss(logits, torch.tensor([[0.0, 1.0, 0.0]]), truth, 20.0, 1.0, 1.0)
    assert best.tolist() == [1]
    assert loss.item() < 1e-3  # the chosen output is right and so is every IoU prediction but...
    actual = mask_iou(logits > 0, truth[:, None].expand_as(logits))
    assert actual[0, 1] == 1 and actual[0, 0] == 0


def test_train_refuses_a_dst_without_ground_truth_and_a_base_that_is_not_sam(tmp_path):
    def train(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "samflow.cli.main", "train", *args], capture_output=True,
                              text=True, check=False, cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": ""})

    empty = train("no-such-run", "--out", "model", "--profile", "tiny")
    assert empty.returncode == 2 and "no ground-truth or reviewed masks" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1 and not (tmp_path / "model").exists()
    clip = train("no-such-run", "--out", "model", "--base", "tiny://clip")
    assert clip.returncode == 2 and "training supports sam and sam2 models" in clip.stderr


def _step_gradients(image_encoder: str) -> dict[str, bool]:
    """Which parts of a small SAM get a gradient from one training step."""
    from transformers import SamModel

    from samflow.train.bases import small_sam_config
    from samflow.train.step import SamTrainStep, StepParams
    from samflow.train.trainable import Parts, prepare, sam_of

    torch.manual_seed(0)
    model = prepare(SamModel(small_sam_config(64, 16)), Parts(image_encoder=image_encoder))
    step = SamTrainStep(sam_of(model), StepParams(masks_per_image=2, correction_rounds=1))
    low_res = 32  # 4 per token of a 64-px input with 8-px patches
    masks = [torch.zeros(2, low_res, low_res, dtype=torch.bool) for _ in range(2)]
    for image in masks:
        image[0, 4:12, 4:14] = True
        image[1, 18:28, 10:30] = True
    step(torch.randn(2, 3, 64, 64), masks, torch.Generator().manual_seed(0)).backward()
    got: dict[str, bool] = {}
    for name, parameter in model.named_parameters():
        part = "lora" if "lora_" in name else next(
            (p for p in ("vision_encoder", "mask_decoder") if f"{p}." in name), "prompt")
        got[part] = got.get(part, False) or (parameter.grad is not None and bool(parameter.grad.abs().sum() > 0))
    return got


def test_a_trained_image_encoder_gets_gradients_and_a_frozen_one_none():
    assert _step_gradients("full") == {"vision_encoder": True, "mask_decoder": True, "prompt": True}
    assert _step_gradients("lora") == {"vision_encoder": False, "lora": True, "mask_decoder": True, "prompt": True}
    assert _step_gradients("frozen") == {"vision_encoder": False, "mask_decoder": True, "prompt": True}
