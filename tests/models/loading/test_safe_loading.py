"""Safe checkpoint loading: pickled code is refused and never runs; hashes are recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from samflow.models.loading.check import check_model
from samflow.models.loading.checkpoint import (
    UnsafeCheckpointError,
    read_state_dict,
    sha256_file,
)
from samflow.models.loading.registry import ModelLoadError, load_model


class CreatesFileWhenUnpickled:
    """A pickle payload: unpickling it calls `open(path, "w")`, i.e. runs code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_malicious(path: Path, marker: Path) -> None:
    torch.save({"weight": torch.zeros(2), "payload": CreatesFileWhenUnpickled(marker)}, path)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "model.pth"
    write_malicious(checkpoint, marker)
    with pytest.raises(UnsafeCheckpointError, match="pickled code"):
        read_state_dict(checkpoint)
    with pytest.raises(ModelLoadError, match="refused"):
        load_model("realesrgan", str(checkpoint), device="cpu")
    with pytest.raises(ModelLoadError, match="refused"):
        check_model(str(checkpoint))
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


def test_malicious_bin_in_hf_directory_is_refused(tmp_path):
    tiny = load_model("sam", "tiny://sam", device="cpu")
    tiny.model.config.save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    write_malicious(tmp_path / "pytorch_model.bin", marker)
    with pytest.raises(ModelLoadError, match="pickled code"):
        load_model("sam", str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="pickled code"):
        check_model(str(tmp_path))
    assert not marker.exists()


def test_plain_tensor_pickle_directory_loads(tmp_path, images):
    """A legacy pytorch_model.bin that is only tensors loads through weights_only=True."""
    tiny = load_model("sam", "tiny://sam", device="cpu")
    tiny.model.config.save_pretrained(tmp_path)
    torch.save(tiny.model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_model("sam", str(tmp_path), device="cpu")
    assert loaded.checkpoint_sha256 == sha256_file(tmp_path / "pytorch_model.bin")
    torch.testing.assert_close(loaded.encode(images[:1]).embeddings, tiny.encode(images[:1]).embeddings)


def test_safetensors_preferred_over_pickle(tmp_path):
    tiny = load_model("sam", "tiny://sam", device="cpu")
    tiny.model.save_pretrained(tmp_path)
    write_malicious(tmp_path / "pytorch_model.bin", tmp_path / "pwned")  # ignored: safetensors wins
    loaded = load_model("sam", str(tmp_path), device="cpu")
    assert loaded.checkpoint_sha256 == sha256_file(tmp_path / "model.safetensors")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("family", ["sam", "sam2", "clip", "siglip", "dinov2", "owlv2", "realesrgan"])
def test_check_model_tiny(family):
    report = check_model(f"tiny://{family}")
    assert report["family"] == family and report["uri"] == f"tiny://{family}"
    assert report["parameters"] > 0 and report["device"] in ("cpu", "cuda", "cuda:0")
    assert report["dtype"] in ("float32", "bfloat16", "float16")
    assert len(report["checkpoint_sha256"]) == 64
    json.dumps(report)  # printable by the CLI as-is


def test_check_model_infers_family_from_config_and_file(tmp_path):
    sam_dir = tmp_path / "sam"
    load_model("sam", "tiny://sam", device="cpu").model.save_pretrained(sam_dir)
    report = check_model(str(sam_dir))
    assert report["family"] == "sam"
    assert report["checkpoint_sha256"] == sha256_file(sam_dir / "model.safetensors")

    esrgan = load_model("realesrgan", "tiny://realesrgan", device="cpu")
    pth = tmp_path / "RealESRGAN_tiny.pth"
    torch.save({"params_ema": esrgan.model.state_dict()}, pth)
    report = check_model(str(pth))
    assert report["family"] == "realesrgan" and report["parameters"] == esrgan.num_parameters
    assert report["checkpoint_sha256"] == sha256_file(pth)


def test_check_model_errors_are_user_facing(tmp_path):
    with pytest.raises(ModelLoadError, match="tiny://"):
        check_model(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="--family"):
        check_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="unknown"):
        check_model("tiny://bert")


def test_a_large_checkpoints_hash_is_remembered_while_its_stat_is_unchanged(tmp_path, monkeypatch):
    """A multi-GB checkpoint is read once to hash it, not on every run; a rewrite (new
    modification time) is hashed again."""
    import hashlib
    import os

    monkeypatch.setenv("SAMFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.safetensors"
    first = os.urandom(1 << 20) * 65  # 65 MiB: above the size whose hash is remembered
    path.write_bytes(first)
    assert sha256_file(path) == hashlib.sha256(first).hexdigest()

    stat = path.stat()
    with open(path, "r+b") as handle:  # same size, same inode, modification time put back
        handle.write(b"\0" * 16)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sha256_file(path) == hashlib.sha256(first).hexdigest(), "the remembered hash was not used"

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_small_files_hash_is_always_computed(tmp_path, monkeypatch):
    import hashlib
    import os

    monkeypatch.setenv("SAMFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "config.bin"
    path.write_bytes(b"a" * 1000)
    stat = path.stat()
    assert sha256_file(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sha256_file(path) == hashlib.sha256(b"b" * 1000).hexdigest()
