"""Pictures read again after a run go through the pipeline's own decoder: a run over the odd but
valid images the decode tests use (EXIF rotation, CMYK, 16-bit, palettes, alpha...) previews every
one upright with its masks over it, and a rotated photo searched by image finds its own vector."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samflow.cli.main import main
from tests.helpers.badinputs import odd_good_images, write_odd_good_images
from tests.helpers.cli_process import samflow

# The preview's thumbnails are JPEGs of their own (quality 85): they add their own error.
THUMBNAIL_ERROR = 6.0
CARD = re.compile(r'<figure class="card".*?</figure>', re.DOTALL)


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory, ray_cluster, prefect_server) -> Path:
    root = tmp_path_factory.mktemp("odd-pictures")
    write_odd_good_images(root / "src")
    settings = ["engine.points_per_side=4", "engine.pred_iou_thresh=0", "engine.stability_score_thresh=0"]
    assert main(["annotate", str(root / "src"), "--out", str(root / "out"), "--profile", "tiny",
                 *(arg for setting in settings for arg in ("--set", setting))]) == 0
    assert main(["index", "build", str(root / "out")]) == 0
    return root


def _picture(data_uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB"))


def _cards(page: str) -> dict[str, dict[str, np.ndarray]]:
    """title -> its photo (and mask overlay, when it has masks) as pixels."""
    cards = {}
    for card in CARD.findall(page):
        title = re.search(r'<img class="photo" alt="([^"]*)"', card).group(1)
        images = dict(re.findall(r'<img class="(photo|overlay)" alt="[^"]*" src="([^"]+)"', card))
        cards[title] = {kind: _picture(uri) for kind, uri in images.items()}
    return cards


def test_preview_shows_every_odd_picture_upright_with_its_masks(odd_run) -> None:
    done = samflow("preview", "out", "--out", "report.html", cwd=odd_run)  # relative paths, as typed
    expected = odd_good_images()
    assert json.loads(done.stdout)["shown"] == len(expected)
    cards = _cards((odd_run / "report.html").read_text())
    assert set(cards) == set(expected)
    masked = 0
    for name, (_, truth, tolerance) in expected.items():
        photo = cards[name]["photo"]
        assert photo.shape == truth.shape, name  # upright: 48 x 64, not 64 x 48
        error = np.abs(photo.astype(float) - truth).mean()
        assert error <= tolerance + THUMBNAIL_ERROR, f"{name}: mean error {error:.1f}"
        if "overlay" in cards[name]:
            assert cards[name]["overlay"].shape == photo.shape, name
            masked += 1
    assert "overlay" in cards["exif_rotated.jpg"] and masked == len(expected)


def test_a_rotated_photo_searched_by_image_finds_its_own_vector(odd_run) -> None:
    done = samflow("search", "out", "--image", "src/exif_rotated.jpg", "-k", "20", "--json", cwd=odd_run)
    hits = {Path(hit["uri"]).name: hit["score"] for hit in json.loads(done.stdout)}
    # Decoded unrotated, the tiny CLIP's vector of the photo is about 0.9985 of its indexed one.
    assert hits["exif_rotated.jpg"] == pytest.approx(1.0, abs=1e-5)
