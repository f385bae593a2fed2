"""``samflow engine-round`` as a user types it: relative paths, a joined Ray cluster, the
session's Prefect server. One round annotates the training scenes, scores the current model on
held-out scenes, trains, scores the new model, and records which model is current."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from samflow.train.scenes import write_scene_tars

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ["input.sa1b_ground_truth=true", "stages.embed.enabled=false", "train.epochs=1", "train.batch_size=2",
            "train.masks_per_image=2", "train.correction_rounds=1", "train.holdout_fraction=0.3"]


@pytest.mark.slow
def test_a_round_scores_before_and_after_and_keeps_the_better_model(tmp_path, ray_cluster, prefect_server):
    from prefect.settings import PREFECT_API_URL

    write_scene_tars(tmp_path / "train", 6, seed=3, side=(64, 96), per_tar=3)
    write_scene_tars(tmp_path / "holdout", 3, seed=11, side=(64, 96), per_tar=3)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_cluster.address,
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [sys.executable, "-m", "samflow.cli.main", "engine-round", "train", "--out", "dst",
               "--holdout", "holdout", "--profile", "tiny", *(a for s in SETTINGS for a in ("--set", s))]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    record = json.loads(done.stdout[done.stdout.index("{"):])

    dst = tmp_path / "dst"
    assert json.loads((dst / "_rounds" / f"{record['round_id']}.json").read_text())["current_model"] == record["current_model"]
    assert record["model_before"]["uri"] == "tiny://sam" and record["model_after"]["uri"] == str(dst / "_rounds" / record["round_id"] / "model")
    assert record["model_before"]["sha256"] != record["model_after"]["sha256"]  # training moved the weights
    before, after = record["holdout_before"], record["holdout_after"]
    assert before["images"] == after["images"] == 3 and before["gt_masks"] == after["gt_masks"] > 0
    assert record["replaced"] == (after["miou"] > before["miou"])
    assert record["current_model"] == (record["model_after"]["uri"] if record["replaced"] else "tiny://sam")
    assert record["train"]["data"]["train_items"] + record["train"]["data"]["holdout_items"] == 6
    assert f"held-out mIoU {before['miou']:.4f} -> {after['miou']:.4f}" in done.stderr

    shown = subprocess.run([sys.executable, "-m", "samflow.cli.main", "runs", "dst"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "engine rounds under dst" in shown.stdout and record["round_id"] in shown.stdout


def test_a_round_without_held_out_ground_truth_is_refused_in_one_line(tmp_path):
    write_scene_tars(tmp_path / "train", 1, seed=3, side=(64, 96), per_tar=1)
    done = subprocess.run([sys.executable, "-m", "samflow.cli.main", "engine-round", "train", "--out", "dst",
                           "--holdout", "train", "--profile", "tiny"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("samflow engine-round: ") and "input.sa1b_ground_truth=true" in lines[0]
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("holdout", ["pictures", "tars without sidecars", "missing"])
def test_a_held_out_split_without_ground_truth_is_refused_in_one_line(tmp_path, holdout):
    import tarfile

    from samflow.scenes.sample import write_sample_dataset

    write_scene_tars(tmp_path / "train", 1, seed=3, side=(64, 96), per_tar=1)
    if holdout == "pictures":
        write_sample_dataset(tmp_path / "held")
    elif holdout == "tars without sidecars":
        (tmp_path / "held").mkdir()
        with tarfile.open(tmp_path / "held" / "a.tar", "w") as tar:
            tar.add(next((tmp_path / "train").glob("*.tar")), arcname="not_a_sidecar.jpg")
    done = subprocess.run([sys.executable, "-m", "samflow.cli.main", "engine-round", "train", "--out", "dst",
                           "--holdout", "held", "--profile", "tiny", "--set", "input.sa1b_ground_truth=true"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("samflow engine-round: ") and "held" in lines[0]
    assert not (tmp_path / "dst").exists()
