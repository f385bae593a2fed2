"""Sample data: offline, deterministic, decodable, and its ground-truth masks match the pixels."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from samflow.config import InputConfig, StorageConfig
from samflow.media.image import decode_image
from samflow.scenes.sample import (
    SKIMAGE_IMAGES,
    gt_path,
    load_gt,
    main,
    write_sample_dataset,
)
from samflow.store.storage import list_files

N_SYNTHETIC = 4


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sample")
    with pytest.MonkeyPatch.context() as patch:
        # Any attempt to reach the network (a dataset download) fails the fixture.
        def no_network(*args, **kwargs):
            raise AssertionError("sample data tried to open a network socket")

        patch.setattr(socket, "socket", no_network)
        patch.setattr(socket, "create_connection", no_network)
        write_sample_dataset(directory, n_synthetic=N_SYNTHETIC, seed=0)
    return directory


def _images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file())


def test_writes_expected_images_all_decodable_and_small(sample_dir: Path) -> None:
    images = _images(sample_dir)
    assert len(images) == N_SYNTHETIC + len(SKIMAGE_IMAGES)
    for path in images:
        rgb = decode_image(path.read_bytes(), InputConfig().max_pixels)
        assert max(rgb.shape[:2]) <= 512 and rgb.shape[2] == 3


def test_default_globs_skip_ground_truth(sample_dir: Path) -> None:
    cfg = InputConfig()
    listed = [Path(uri) for uri, _ in list_files(str(sample_dir), StorageConfig(), cfg.include, cfg.exclude)]
    assert listed == _images(sample_dir)
    assert all(gt_path(p).exists() for p in listed if p.name.startswith("scene_"))


def test_deterministic_in_seed(sample_dir: Path, tmp_path: Path) -> None:
    again = write_sample_dataset(tmp_path / "again", n_synthetic=N_SYNTHETIC, seed=0)
    other = write_sample_dataset(tmp_path / "other", n_synthetic=1, seed=1)
    assert {p.name: p.read_bytes() for p in again} == {p.name: p.read_bytes() for p in _images(sample_dir)}
    assert other[0].read_bytes() != again[0].read_bytes()


def _grow(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _near_colour_edge(rgb: np.ndarray, threshold: float = 40.0) -> np.ndarray:
    """Pixels within one pixel of a colour step larger than ``threshold`` (L1 over RGB)."""
    step = np.zeros(rgb.shape[:2])
    step[:, :-1] = np.abs(np.diff(rgb, axis=1)).sum(axis=2)
    step[:-1] = np.maximum(step[:-1], np.abs(np.diff(rgb, axis=0)).sum(axis=2))
    return _grow(step > threshold)


@pytest.mark.parametrize("index", range(N_SYNTHETIC))
def test_ground_truth_masks_outline_the_painted_objects(sample_dir: Path, index: int) -> None:
    path = next(sample_dir.glob(f"scene_{index:03d}.*"))
    rgb = decode_image(path.read_bytes(), InputConfig().max_pixels).astype(np.float64)
    masks, labels = load_gt(path)
    assert masks.dtype == bool and masks.shape[1:] == rgb.shape[:2]
    assert len(labels) == len(masks) >= 1
    assert masks.sum(axis=0).max() <= 1  # visible parts never overlap
    edges = _near_colour_edge(rgb)
    for mask, label in zip(masks, labels):
        # One flat-ish object inside; its outline on the picture's colour edges (a mask off by
        # two pixels puts most of its outline on flat colour and fails this).
        inside = np.abs(rgb[mask] - rgb[mask].mean(axis=0)).sum(axis=1).mean()
        outline = mask & _grow(~mask)
        on_edge = edges[outline].mean()
        assert inside < 40, (label, inside)
        assert on_edge >= 0.95, (label, on_edge)


def test_cli_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(tmp_path / "cli"), "--synthetic", "1", "--seed", "3"])
    assert "wrote" in capsys.readouterr().out
    assert len(_images(tmp_path / "cli")) == 1 + len(SKIMAGE_IMAGES)
    main([str(tmp_path / "only_synthetic"), "--synthetic", "2", "--no-skimage"])
    assert [p.name for p in _images(tmp_path / "only_synthetic")] == ["scene_000.png", "scene_001.jpg"]
