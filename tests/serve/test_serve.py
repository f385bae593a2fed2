"""samflow serve: the Ray Serve app answered over real HTTP on localhost."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from samflow.cli.main import main
from samflow.schemas import rle
from samflow.serve.app import Limits, build_app
from tests.helpers.index_data import copy_of_run
from tests.helpers.ports import free_port

TOKEN = "test-token-0123456789"




@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_cluster, prefect_server, tiny_run_template):
    from ray import serve

    root = tmp_path_factory.mktemp("serve-run")
    dst = copy_of_run(tiny_run_template, root)
    assert main(["index", "build", dst]) == 0
    assert main(["index", "build", dst, "--kind", "mask"]) == 0
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    limits = Limits(max_body_bytes=200_000, max_image_pixels=200 * 200)
    serve.run(build_app(dst, token=TOKEN, limits=limits), route_prefix="/", name="samflow-test")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield {"client": client, "root": root, "port": port}
    serve.delete("samflow-test")
    serve.shutdown()


def _b64_image(path=None, size=(64, 48)) -> str:
    if path is not None:
        return base64.b64encode(path.read_bytes()).decode()
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


def test_healthz_reports_the_indexes(served):
    response = httpx.get(f"http://127.0.0.1:{served['port']}/healthz", timeout=60)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["indexes"]["image"] == 5 and body["indexes"]["mask"] > 0


def test_search_by_text_and_image(served):
    client = served["client"]
    response = client.post("/search", json={"text": "a red car", "k": 3})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and results[0]["uri"].endswith(".png")
    image = _b64_image(served["root"] / "src" / "scene_1.png")
    results = client.post("/search", json={"image": image, "k": 1}).json()["results"]
    assert results[0]["uri"].endswith("scene_1.png") and results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    masks = client.post("/search", json={"text": "a dog", "k": 2, "kind": "mask"}).json()["results"]
    assert masks and all(len(m["bbox"]) == 4 and m["annotation_id"] for m in masks)


def test_concurrent_embeds_are_answered(served):
    from concurrent.futures import ThreadPoolExecutor

    client = served["client"]
    texts = [f"photo number {i}" for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda t: client.post("/embed", json={"text": t}), texts))
    vectors = np.array([r.json()["embedding"] for r in replies])
    assert all(r.status_code == 200 for r in replies)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert len({tuple(np.round(v, 5)) for v in vectors}) == len(texts)


def test_segment_returns_rle_masks(served):
    client = served["client"]
    image = _b64_image(served["root"] / "src" / "scene_0.png")
    response = client.post("/segment", json={"image": image, "points": [[30, 40], [100, 60]]})
    assert response.status_code == 200, response.text
    masks = response.json()["masks"]
    assert len(masks) == 2
    for mask in masks:
        decoded = rle.decode(mask["segmentation"])
        assert decoded.shape == (96, 128) and int(decoded.sum()) == mask["area"]
    boxes = client.post("/segment", json={"image": image, "boxes": [[10, 10, 60, 50]]}).json()["masks"]
    assert len(boxes) == 1


@pytest.mark.parametrize("path, body, status, words", [
    ("/search", b"{not json", 400, "malformed JSON"),
    ("/search", b"[1, 2]", 422, "JSON object"),
    ("/search", b'{"text": "a", "k": "ten"}', 422, "k"),
    ("/search", b'{"text": 5}', 422, "text"),
    ("/search", b'{"k": 3}', 422, "exactly one"),
    ("/search", b'{"text": "a", "image": "eA=="}', 422, "exactly one"),
    ("/search", b'{"text": "a", "kind": "video"}', 422, "kind"),
    ("/search", b'{"text": "a", "k": 0}', 422, "k"),
    ("/search", b'{"text": "a", "k": 100000}', 422, "at most"),
    ("/search", b'{"text": "a", "colour": "red"}', 422, "colour"),
    ("/search", b'{"image": "%%%not base64"}', 400, "base64"),
    ("/search", b'{"image": "aGVsbG8gd29ybGQ="}', 400, "not a readable image"),
    ("/embed", b'{"text": "   "}', 422, "empty"),
    ("/segment", b'{"image": "eA==", "points": [[1, 2, 3]]}', 422, "points"),
    ("/segment", b'{"image": "eA=="}', 422, "exactly one"),
])
def test_bad_requests_get_a_clear_4xx(served, path, body, status, words):
    response = served["client"].post(path, content=body, headers={"content-type": "application/json"})
    assert words.lower() in _error(response, status).lower()


def test_oversized_body_and_image_are_refused(served):
    client = served["client"]
    big = {"image": "A" * 300_000}
    assert "limit" in _error(client.post("/embed", json=big), 413)
    large = _b64_image(size=(400, 300))  # small file, too many pixels
    assert "pixels" in _error(client.post("/embed", json={"image": large}), 413)


def test_token_is_required_when_set(served):
    base = f"http://127.0.0.1:{served['port']}"
    assert "missing" in _error(httpx.post(f"{base}/search", json={"text": "a"}, timeout=60), 401)
    wrong = {"Authorization": "Bearer nope"}
    assert "wrong" in _error(httpx.post(f"{base}/search", json={"text": "a"}, headers=wrong, timeout=60), 403)
    assert httpx.get(f"{base}/healthz", timeout=60).status_code == 200
