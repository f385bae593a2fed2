"""Every model URI a user writes works from the command line, through the one model cache and the
one model preflight: s3:// (the moto server), https:// (a local TLS server with its own CA),
torchvision://, local folders with pins that cover every file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from samflow.models.loading.cache import cache_root, split_pin
from samflow.models.loading.checkpoint import sha256_file, sha256_pin
from samflow.models.loading.registry import load_model
from samflow.models.realesrgan.arch import SRVGGNetCompact
from samflow.scenes.sample import write_sample_dataset
from tests.helpers.cli_process import ROOT
from tests.helpers.tls import https_server

WRONG = "ab" * 32


def _samflow(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "samflow.cli.main", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=600)


def _tiny_sam_folder(folder: Path) -> Path:
    load_model("sam", "tiny://sam", device="cpu").model.save_pretrained(folder)
    return folder


def _upload(s3_fs, folder: Path, prefix: str) -> None:
    for file in folder.iterdir():
        s3_fs.put_file(str(file), f"{prefix}/{file.name}")


def _esrgan_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save({"params": SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4).state_dict()}, path)
    return path


def _cache_slot(uri: str, root: Path) -> Path:
    return root / hashlib.sha256(split_pin(uri)[0].encode()).hexdigest()[:24]


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.slow
def test_annotate_takes_segment_from_s3_and_upscale_from_https(tmp_path, capsys, monkeypatch, ray_cluster,
                                                               prefect_server, s3_bucket, s3_fs):
    """The issue's command: `--set stages.segment.model=s3://bkt/models/sam/`, and the upscale
    stage's checkpoint over https with its pin. The preflight fetches both into this node's model
    cache, which the run's actors reuse (the default cache, shared by driver and workers)."""
    from samflow.cli.main import main

    images = write_sample_dataset(tmp_path / "in", n_synthetic=2, seed=5, include_skimage=False)
    _upload(s3_fs, _tiny_sam_folder(tmp_path / "sam"), f"{s3_bucket[5:]}/annotate/sam")
    www = tmp_path / "www"
    www.mkdir()
    sha = sha256_file(_esrgan_checkpoint(www / "x4.pth"))
    segment_uri = f"{s3_bucket}/annotate/sam/"
    with https_server(www, tmp_path / "certs") as (base, ca):
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        upscale_uri = f"{base}/x4.pth#sha256={sha}"
        try:
            code = main(["annotate", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--profile", "tiny",
                         "--set", f"stages.segment.model={segment_uri}", "--set", "stages.upscale.enabled=true",
                         "--set", f"stages.upscale.model={upscale_uri}", "--set", "stages.embed.enabled=false"])
        finally:
            for uri in (segment_uri, upscale_uri):
                shutil.rmtree(_cache_slot(uri, cache_root()), ignore_errors=True)
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["images"] == len(images) and summary["counts"]["errors"] == 0
    assert summary["counts"]["annotations"] > 0
    manifest = json.loads(next((tmp_path / "out" / "_runs").glob("*.json")).read_text())
    assert segment_uri in json.dumps(manifest) and upscale_uri in json.dumps(manifest)


def test_a_pin_mismatch_is_one_line_exit_2_and_caches_nothing(tmp_path, s3_bucket, s3_fs):
    write_sample_dataset(tmp_path / "in", n_synthetic=1, seed=1, include_skimage=False)
    _upload(s3_fs, _tiny_sam_folder(tmp_path / "sam"), f"{s3_bucket[5:]}/pinned/sam")
    cache = tmp_path / "cache"
    done = _samflow("annotate", "in", "--out", "out", "--profile", "tiny",
                    "--set", f"stages.segment.model={s3_bucket}/pinned/sam/",
                    "--set", f"stages.segment.model_sha256={WRONG}", cwd=tmp_path, SAMFLOW_MODEL_CACHE=str(cache))
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert "stages.segment.model" in line and "refused" in line and WRONG in line
    assert not _cache_slot(f"{s3_bucket}/pinned/sam/", cache).exists()
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_folder_pin_covers_config_and_tokenizer_not_only_weights(tmp_path, s3_bucket, s3_fs):
    folder = _tiny_sam_folder(tmp_path / "sam")
    pin = sha256_pin(folder)
    done = _samflow("models", "check", f"sam#sha256={pin}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model_sha256"] == pin
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "note": "edited"}))
    assert sha256_pin(folder) != pin
    done = _samflow("models", "check", f"{folder}#sha256={pin}", cwd=tmp_path)  # absolute path this time
    assert done.returncode == 2 and "refused" in _one_line(done.stderr)
    # the same folder on S3: its edited config.json is caught before anything is cached
    _upload(s3_fs, folder, f"{s3_bucket[5:]}/edited/sam")
    cache = tmp_path / "cache"
    done = _samflow("models", "check", f"{s3_bucket}/edited/sam#sha256={pin}", cwd=tmp_path,
                    SAMFLOW_MODEL_CACHE=str(cache))
    assert done.returncode == 2 and "refused" in _one_line(done.stderr)
    assert not _cache_slot(f"{s3_bucket}/edited/sam", cache).exists()


def test_torchvision_detector_passes_annotate_preflight_without_downloading(tmp_path):
    """The README's `stages.propose.model=torchvision://maskrcnn_resnet50_fpn_v2`: the preflight
    accepts it without fetching weights (the run fails later in the preflight, on a segment model
    that is missing, so nothing starts); a builder that is no Mask R-CNN is refused."""
    write_sample_dataset(tmp_path / "in", n_synthetic=1, seed=1, include_skimage=False)
    torch_home = tmp_path / "torch"
    common = ("annotate", "in", "--out", "out", "--profile", "tiny", "--set", "stages.propose.enabled=true")
    done = _samflow(*common, "--set", "stages.propose.model=torchvision://maskrcnn_resnet50_fpn_v2",
                    "--set", "stages.segment.model=./no-such-sam", cwd=tmp_path, TORCH_HOME=str(torch_home))
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert "stages.segment.model" in line and "does not exist" in line
    assert not torch_home.exists() or not any(torch_home.rglob("*.pth"))
    done = _samflow(*common, "--set", "stages.propose.model=torchvision://resnet50", cwd=tmp_path,
                    TORCH_HOME=str(torch_home))
    assert done.returncode == 2 and "stages.propose.model" in _one_line(done.stderr)


def test_an_https_model_is_checked_against_the_ca_the_client_is_given(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    sha = sha256_file(_esrgan_checkpoint(www / "x4.pth"))
    with https_server(www, tmp_path / "certs") as (base, ca):
        uri = f"{base}/x4.pth#sha256={sha}"
        done = _samflow("models", "check", uri, cwd=tmp_path, SSL_CERT_FILE=str(ca),
                        SAMFLOW_MODEL_CACHE=str(tmp_path / "cache"))
        assert done.returncode == 0, done.stderr
        facts = json.loads(done.stdout)
        assert facts["family"] == "realesrgan" and facts["model_sha256"] == sha and facts["uri"] == uri
        # without the CA the server is not trusted: one line, exit 2
        done = _samflow("models", "check", uri, cwd=tmp_path, SAMFLOW_MODEL_CACHE=str(tmp_path / "other"))
        assert done.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in _one_line(done.stderr)
