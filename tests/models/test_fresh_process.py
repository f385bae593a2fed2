"""Behaviour that needs a fresh Python process (one is started for the whole module):
offline loading from the Hugging Face cache, and models/ never importing Ray, Prefect or fsspec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from samflow.models.loading.registry import load_model

SCRIPT = """
import json, sys
import samflow.models.sam.runner, samflow.models.sam2.runner, samflow.models.clip.runner, samflow.models.dinov2.runner
import samflow.models.detectors.owlv2, samflow.models.realesrgan.runner
from samflow.models.loading.check import check_model
from samflow.models.loading.registry import load_model
load_model("clip", "tiny://clip", device="cpu").embed_texts(["a cat"])
checks = [check_model("hf://acme/sam-tiny"), check_model("hf://acme/esrgan/x4.pth")]
banned = sorted(m for m in sys.modules if m.split(".")[0] in {"ray", "prefect", "fsspec", "s3fs"})
print(json.dumps({"checks": checks, "banned": banned}))
"""


def fake_hub_cache(cache: Path, repo: str, write: Callable[[Path], None]) -> None:
    """The on-disk layout huggingface_hub keeps: refs/main -> snapshots/<commit>/<files>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    write(snapshot)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Run SCRIPT offline (HF_HUB_OFFLINE=1) against a hub cache holding a tiny SAM repository and
    a Real-ESRGAN repository with two .pth files."""
    tiny = load_model("sam", "tiny://sam", device="cpu")
    esrgan = load_model("realesrgan", "tiny://realesrgan", device="cpu")
    release = {"params_ema": esrgan.model.state_dict()}
    cache = tmp_path_factory.mktemp("hub")
    fake_hub_cache(cache, "acme/sam-tiny", lambda d: tiny.model.save_pretrained(d))
    fake_hub_cache(cache, "acme/esrgan", lambda d: [torch.save(release, d / n) for n in ("x4.pth", "x2.pth")])
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report, tiny, esrgan


def test_hub_ids_resolve_from_the_local_cache_offline(fresh):
    """hf://org/name loads a cached snapshot with no network; hf://org/name/file one file."""
    report, tiny, esrgan = fresh
    sam, upscaler = report["checks"]
    assert sam["family"] == "sam" and sam["parameters"] == tiny.num_parameters
    assert upscaler["family"] == "realesrgan" and upscaler["parameters"] == esrgan.num_parameters


def test_models_never_import_orchestration_or_storage(fresh):
    assert fresh[0]["banned"] == []
