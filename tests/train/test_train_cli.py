"""``samflow train`` as a user runs it: a subprocess joined to the session's Ray cluster, on a
DST whose ground truth came in through ``samflow annotate`` (SA-1B-style tars of synthetic
scenes), writing its model to the S3 server; the model then loads by URI and annotates. A run
killed mid-training resumes from its last checkpoint epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samflow.train.run import run_name
from samflow.train.scenes import write_scene_tars

REPO = Path(__file__).resolve().parents[2]
FAST = ["--set", "train.batch_size=2", "--set", "train.masks_per_image=2", "--set", "train.correction_rounds=1",
        "--set", "train.holdout_fraction=0.3"]


def _env(ray_cluster) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": ray_cluster.address, "PYTHONPATH": str(REPO)}


def samflow(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "samflow.cli.main", *args], capture_output=True, text=True,
                          check=False, env=env, cwd=REPO, timeout=timeout)


def _last_json(stdout: str, first_key: str) -> dict:
    """The command's JSON summary: the last object on stdout that opens with ``first_key``."""
    return json.JSONDecoder().raw_decode(stdout[stdout.rindex(f'{{\n "{first_key}"'):])[0]


@pytest.fixture(scope="module")
def scenes_dst(tmp_path_factory, s3_bucket, s3_fs, ray_cluster) -> dict[str, str]:
    """SA-1B-style tars of 8 scenes on S3, annotated for their ground truth only."""
    local = tmp_path_factory.mktemp("scenes")
    for path in write_scene_tars(local, 8, seed=3, side=(64, 96), per_tar=4):
        s3_fs.pipe_file(f"{s3_bucket}/scenes/{path.name}", path.read_bytes())
    src, dst = f"{s3_bucket}/scenes", f"{s3_bucket}/dst"
    done = samflow(_env(ray_cluster), "annotate", src, "--out", dst, "--profile", "tiny",
                   "--set", "input.sa1b_ground_truth=true", "--set", "stages.segment.enabled=false",
                   "--set", "stages.embed.enabled=false")
    assert done.returncode == 0, done.stderr[-3000:]
    return {"src": src, "dst": dst}


@pytest.mark.slow
def test_trained_model_on_s3_has_lineage_loads_by_uri_and_annotates(scenes_dst, s3_bucket, s3_fs, ray_cluster):
    env = _env(ray_cluster)
    out = f"{s3_bucket}/models/tuned"
    trained = samflow(env, "train", scenes_dst["dst"], "--out", out, "--profile", "tiny", "--epochs", "2", *FAST)
    assert trained.returncode == 0, trained.stderr[-3000:]
    # The workers' progress reaches the terminal of the command that started them.
    assert "samflow train: epoch 1/2" in trained.stderr and "samflow train: epoch 2/2" in trained.stderr, trained.stderr[-3000:]
    summary = _last_json(trained.stdout, "model")
    assert summary["epochs_done"] == 2 and summary["data"]["train_items"] + summary["data"]["holdout_items"] == 8

    lineage = json.loads(s3_fs.cat_file(f"{out}/samflow.json"))
    base_sha = json.loads(samflow(env, "models", "check", "tiny://sam").stdout)["checkpoint_sha256"]
    assert lineage["base_model"] == "tiny://sam" and lineage["base_sha256"] == base_sha
    assert lineage["dst"] == scenes_dst["dst"] and lineage["reviews_version"] is None
    assert [e["epoch"] for e in lineage["epochs"]] == [1, 2]
    assert all(0.0 <= e["holdout_miou"] <= 1.0 and e["images"] > 0 for e in lineage["epochs"])
    assert lineage["train_config"]["masks_per_image"] == 2
    assert {"config.json", "model.safetensors", "samflow.json"} <= {p.rsplit("/", 1)[1] for p in s3_fs.ls(out)}

    checked = samflow(env, "models", "check", out)
    assert checked.returncode == 0, checked.stderr
    facts = json.loads(checked.stdout)
    assert facts["family"] == "sam" and facts["checkpoint_sha256"] != base_sha  # the weights moved

    annotated = samflow(env, "annotate", scenes_dst["src"], "--out", f"{s3_bucket}/by-tuned", "--profile", "tiny",
                        "--set", f"stages.segment.model={out}", "--set", "stages.embed.enabled=false")
    assert annotated.returncode == 0, annotated.stderr[-3000:]
    assert _last_json(annotated.stdout, "run_id")["counts"]["images"] == 8


def _wait_for_checkpoint(folder: Path, process: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        # Ray Train registers a checkpoint in its snapshot after the files are up: a run killed
        # before that has nothing to resume from
        snapshot = folder / "checkpoint_manager_snapshot.json"
        if snapshot.is_file() and "checkpoint_" in snapshot.read_text():
            return
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint under {folder} within {timeout_s} s")


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_epoch(scenes_dst, tmp_path, ray_cluster):
    env = _env(ray_cluster)
    out = tmp_path / "model"
    checkpoints = tmp_path / "checkpoints"
    # LoRA on the image encoder: its adapters are in the checkpoint, resumed and merged on export
    args = ["train", scenes_dst["dst"], "--out", str(out), "--profile", "tiny", "--epochs", "3",
            "--set", f"train.checkpoint_uri={checkpoints}", "--set", "train.image_encoder=lora", *FAST]
    process = subprocess.Popen([sys.executable, "-m", "samflow.cli.main", *args], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_checkpoint(checkpoints / run_name(str(out)), process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not out.exists()  # killed before it finished

    resumed = samflow(env, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lineage = json.loads((out / "samflow.json").read_text())
    assert lineage["epochs_done"] == 3 and [e["epoch"] for e in lineage["epochs"]] == [1, 2, 3]
    assert len(lineage["resumed_at"]) == 1 and 1 <= lineage["resumed_at"][0] < 3
    assert len(list((checkpoints / run_name(str(out))).glob("checkpoint_*"))) >= 1  # train.checkpoint_uri honoured
    changed = _changed_parts(out)
    assert changed["vision_encoder"] and changed["mask_decoder"], changed


def _changed_parts(model_dir: Path) -> dict[str, bool]:
    """Which parts of a trained model's weights differ from its base's (tiny://sam)."""
    from safetensors.torch import load_file

    from samflow.models.loading.registry import load_model

    base = load_model("sam", "tiny://sam", device="cpu", dtype=None).model.state_dict()
    trained = load_file(str(model_dir / "model.safetensors"))
    assert set(trained) <= set(base), set(trained) - set(base)  # LoRA merged: plain SamModel names
    changed: dict[str, bool] = {}
    for name, tensor in trained.items():
        part = name.split(".")[0]
        changed[part] = changed.get(part, False) or not bool((tensor.float() == base[name].float()).all())
    return changed


@pytest.mark.slow
def test_sam2_fine_tunes_with_lora_and_its_model_annotates(scenes_dst, tmp_path, ray_cluster):
    """SAM 2 is the second family: the same command, recipe and lineage; the model it writes is
    a SAM 2 model the segment stage loads by path."""
    env = _env(ray_cluster)
    out = tmp_path / "sam2-tuned"
    trained = samflow(env, "train", scenes_dst["dst"], "--out", str(out), "--base", "tiny://sam2", "--profile", "tiny",
                      "--epochs", "1", "--set", "train.image_encoder=lora", *FAST)
    assert trained.returncode == 0, trained.stderr[-3000:]
    lineage = json.loads((out / "samflow.json").read_text())
    assert lineage["family"] == "sam2" and lineage["base_model"] == "tiny://sam2" and lineage["epochs_done"] == 1
    assert 0.0 <= lineage["epochs"][0]["holdout_miou"] <= 1.0

    checked = samflow(env, "models", "check", str(out))
    assert checked.returncode == 0, checked.stderr
    base_sha = json.loads(samflow(env, "models", "check", "tiny://sam2").stdout)["checkpoint_sha256"]
    facts = json.loads(checked.stdout)
    assert facts["family"] == "sam2" and facts["checkpoint_sha256"] != base_sha

    annotated = samflow(env, "annotate", scenes_dst["src"], "--out", str(tmp_path / "by-sam2"), "--profile", "tiny",
                        "--set", f"stages.segment.model={out}", "--set", "stages.embed.enabled=false")
    assert annotated.returncode == 0, annotated.stderr[-3000:]
    assert _last_json(annotated.stdout, "run_id")["counts"]["images"] == 8


@pytest.fixture
def second_node(ray_cluster):
    node = ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    yield ray_cluster
    ray_cluster.remove_node(node)


def _train_worker_processes() -> list:
    """The live Ray Train worker processes (Ray titles them after the actor class)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.mark.slow
def test_training_on_two_nodes_recovers_when_a_worker_is_killed(scenes_dst, tmp_path, second_node):
    env = _env(second_node)
    out, checkpoints = tmp_path / "model", tmp_path / "checkpoints"
    args = ["train", scenes_dst["dst"], "--out", str(out), "--profile", "tiny", "--epochs", "8",
            "--num-workers", "2", "--set", "train.placement=SPREAD", "--set", f"train.checkpoint_uri={checkpoints}",
            *FAST]
    with (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "samflow.cli.main", *args], env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            _wait_for_checkpoint(checkpoints / run_name(str(out)), process)
            workers = _train_worker_processes()
            # one worker on each node: each node's raylet starts its own workers
            assert len(workers) == 2 and len({w.ppid() for w in workers}) == 2, workers
            workers[1].kill()
            assert process.wait(timeout=600) == 0, (tmp_path / "stderr").read_text()[-3000:]
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    lineage = json.loads((out / "samflow.json").read_text())
    assert lineage["epochs_done"] == 8 and [e["epoch"] for e in lineage["epochs"]] == list(range(1, 9))
    assert len(lineage["resumed_at"]) == 1 and 1 <= lineage["resumed_at"][0] < 8, lineage["resumed_at"]
