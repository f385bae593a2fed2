"""Remote models (s3:// on the moto server, http:// on a local http.server) load through the
per-node cache: fetched once, verified by sha256, a tampered file refused."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from samflow.actors.upscale import UpscaleConfig, UpscaleStage
from samflow.config import StorageConfig
from samflow.models.realesrgan.arch import SRVGGNetCompact
from samflow.models.loading.cache import ModelFetchError, fetch_model, with_model_cache
from samflow.models.loading.checkpoint import sha256_file, sha256_pin
from samflow.models.loading.registry import load_model


class _Files(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture()
def web(tmp_path):
    """A local HTTP server over tmp_path/www; yields (base URL, folder, list of request paths)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_Files,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, handler.requests
    server.shutdown()
    server.server_close()


def _esrgan_checkpoint(path: Path) -> Path:
    """A small realesr-general-style checkpoint (SRVGG, 2 convs)."""
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4)
    torch.save({"params": net.state_dict()}, path)
    return path


def test_http_model_fetched_once_and_loads(tmp_path, web):
    base, root, requests = web
    sha = sha256_file(_esrgan_checkpoint(root / "x4.pth"))
    cache = tmp_path / "cache"
    uri = f"{base}/x4.pth#sha256={sha}"
    first = fetch_model(uri, cache_dir=cache)
    second = fetch_model(uri, cache_dir=cache)
    assert first == second and Path(first).name == "x4.pth"
    assert requests == ["/x4.pth"]  # the second load did not fetch again
    runner = load_model("realesrgan", first, device="cpu")
    assert runner.checkpoint_sha256 == sha and runner.scale == 4


def test_tampered_http_model_is_refused_and_not_cached(tmp_path, web):
    base, root, _ = web
    path = _esrgan_checkpoint(root / "x4.pth")
    expected = sha256_file(path)
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ModelFetchError, match=f"expected {expected}"):
        fetch_model(f"{base}/x4.pth#sha256={expected}", cache_dir=tmp_path / "cache")
    assert not any(p.name.endswith(".pth") for p in (tmp_path / "cache").rglob("*"))


def test_cached_copy_edited_on_disk_is_fetched_again(tmp_path, web):
    base, root, requests = web
    sha = sha256_file(_esrgan_checkpoint(root / "x4.pth"))
    uri = f"{base}/x4.pth#sha256={sha}"
    local = Path(fetch_model(uri, cache_dir=tmp_path / "cache"))
    local.write_bytes(b"corrupted")
    assert sha256_file(fetch_model(uri, cache_dir=tmp_path / "cache")) == sha
    assert len(requests) == 2


def test_bad_hash_fragment_is_a_clear_error():
    with pytest.raises(ModelFetchError, match="#sha256=<64 hex digits>"):
        fetch_model("https://example.invalid/x.pth#md5=abc")


def test_local_and_hub_uris_pass_through():
    for uri in ("tiny://sam", "facebook/sam-vit-base", "/models/sam"):
        assert fetch_model(uri) == uri


def test_s3_hf_folder_loads_through_cache(tmp_path, s3_bucket, s3_fs):
    """An HF-layout folder on S3, pinned by the folder hash (`models check`'s model_sha256)."""
    from transformers import Dinov2Model

    from samflow.models.dinov2.tiny import tiny_dinov2_config

    folder = tmp_path / "dino"
    Dinov2Model(tiny_dinov2_config()).save_pretrained(folder)
    for file in folder.iterdir():
        s3_fs.put_file(str(file), f"{s3_bucket[5:]}/models/dino/{file.name}")
    reference = load_model("dinov2", str(folder), device="cpu")
    uri = f"{s3_bucket}/models/dino#sha256={sha256_pin(folder)}"
    cache = tmp_path / "cache"
    local = fetch_model(uri, StorageConfig(), cache_dir=cache)
    runner = load_model("dinov2", local, device="cpu")
    image = np.full((40, 40, 3), 100, dtype=np.uint8)
    assert torch.equal(runner.embed_images([image]), reference.embed_images([image]))
    # a second load answers from the cache, even with the bucket emptied
    s3_fs.rm(f"{s3_bucket[5:]}/models/dino", recursive=True)
    assert fetch_model(uri, StorageConfig(), cache_dir=cache) == local


def test_s3_tampered_checkpoint_is_refused(tmp_path, s3_bucket, s3_fs):
    path = _esrgan_checkpoint(tmp_path / "x4.pth")
    s3_fs.put_file(str(path), f"{s3_bucket[5:]}/models/x4.pth")
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(ModelFetchError, match="refused"):
        fetch_model(f"{s3_bucket}/models/x4.pth", StorageConfig(), sha256=wrong, cache_dir=tmp_path / "cache")


def test_stage_loads_its_remote_model_and_records_the_uri(tmp_path, web, monkeypatch):
    base, root, requests = web
    _esrgan_checkpoint(root / "x4.pth")
    monkeypatch.setenv("SAMFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    stage_cls = with_model_cache(UpscaleStage, StorageConfig())
    assert stage_cls.__name__ == "UpscaleStage"  # Ray Data's operator name stays the same
    config = UpscaleConfig(enabled=True, model=f"{base}/x4.pth")
    stages = [stage_cls(config, device="cpu") for _ in range(2)]
    assert requests == ["/x4.pth"]
    assert all(stage.info["model"] == f"{base}/x4.pth" for stage in stages)


def test_models_check_cli_loads_a_remote_checkpoint_and_refuses_a_tampered_one(tmp_path, web, monkeypatch, capsys):
    import json

    from samflow.cli.main import main

    base, root, _ = web
    sha = sha256_file(_esrgan_checkpoint(root / "x4.pth"))
    monkeypatch.setenv("SAMFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    assert main(["models", "check", f"{base}/x4.pth#sha256={sha}"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["family"] == "realesrgan" and facts["checkpoint_sha256"] == sha
    assert facts["uri"] == f"{base}/x4.pth#sha256={sha}" and facts["local_path"].startswith(str(tmp_path))
    wrong = "0" * 64
    assert main(["models", "check", f"{base}/x4.pth#sha256={wrong}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and sha in err
