"""Condition colours by label (ADE20K's published palette), and the controlnet family by URI:
`samflow models check`, an in-code pair and the same pair from a diffusers folder."""

from __future__ import annotations

import json

import numpy as np

from samflow.cli.main import main
from samflow.models.controlnet import load_pair
from samflow.synth.condition import render

# ADE20K (SceneParsing) colours as published: car, sky, tree; wall is the first instance colour
CAR, SKY, TREE, WALL = (0, 102, 200), (6, 230, 230), (4, 200, 3), (120, 120, 120)


def test_masks_are_painted_in_their_labels_colours_and_unknown_labels_by_instance():
    size = (8, 10)
    whole = np.zeros(size, bool)
    whole[:, :6] = True
    part, sky, odd = (np.zeros(size, bool) for _ in range(3))
    part[2:4, 2:4] = True  # on top of the whole: smaller masks are painted last
    sky[:2, 7:] = True
    odd[6:, 8:] = True
    condition = render([whole, part, sky, odd], ["car", "Trees", "sky", "widget"], size)
    expected = np.zeros((*size, 3), np.uint8)
    expected[whole], expected[part], expected[sky], expected[odd] = CAR, TREE, SKY, WALL
    assert np.array_equal(condition, expected)


def test_models_check_and_a_pipeline_folder_generate_what_the_in_code_pair_does(tmp_path, capsys):
    assert main(["models", "check", "tiny://controlnet"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["family"] == "controlnet" and facts["parameters"] > 0 and len(facts["checkpoint_sha256"]) == 64

    in_code = load_pair("tiny://controlnet")
    in_code.pipeline.save_pretrained(str(tmp_path / "pair"))
    assert main(["models", "check", str(tmp_path / "pair"), "--family", "controlnet"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "controlnet"
    from_folder = load_pair(str(tmp_path / "pair"))

    condition = np.zeros((32, 48, 3), np.uint8)
    condition[4:20, 8:30] = CAR
    args = ([condition, condition], ["a photo of car", "a photo of car"], [7, 8])
    first, second = in_code.generate(*args, steps=2), from_folder.generate(*args, steps=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))  # same seed, same image
    assert not np.array_equal(first[0], first[1])  # another seed, another image
    assert main(["models", "check", str(tmp_path / "missing"), "--family", "controlnet"]) == 2
