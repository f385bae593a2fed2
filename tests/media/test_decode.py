"""Decode: odd-but-valid images come out as correct RGB, every bad input as a typed error row."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samflow.config import InputConfig, StorageConfig
from samflow.media.decode import DecodeStage
from samflow.media.image import DecodeError, decode_image
from samflow.media.filetypes import VIDEO_KINDS, sniff_kind
from samflow.schemas.ids import item_id
from samflow.store.storage import StorageSource, join, write_bytes
from tests.helpers.badinputs import (
    FAKE_VIDEO_ERROR,
    bad_inputs,
    encode,
    odd_good_images,
    quadrants,
    write_bad_inputs,
    write_odd_good_images,
)

GOOD = odd_good_images()
BAD = bad_inputs()
DEFAULT_MAX_PIXELS = InputConfig().max_pixels
OUTPUT_COLUMNS = [
    "uri", "item_id", "frame_index", "timestamp_s", "width", "height",
    "pixels", "error_stage", "error_type", "error_message", "video_pending", "meta_json", "source_id",
]


# --- decode_image ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GOOD))
def test_odd_good_image_decodes_to_expected_rgb(name: str) -> None:
    data, expected, tolerance = GOOD[name]
    rgb = decode_image(data, DEFAULT_MAX_PIXELS)
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert rgb.shape == expected.shape
    error = np.abs(rgb.astype(np.float64) - expected).mean()
    assert error <= tolerance, f"{name}: mean abs error {error:.2f} > {tolerance}"


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_typed_error_with_reason(name: str) -> None:
    data, expected_type = BAD[name]
    if sniff_kind(data[:64]) in VIDEO_KINDS:
        expected_type = "unsupported_video"  # decode_image takes still images; videos go to DecodeStage
    with pytest.raises(DecodeError) as caught:
        decode_image(data, DEFAULT_MAX_PIXELS)
    err = caught.value
    assert err.error_type == expected_type, err.message
    # The message names the reason in words a person can act on.
    reason_words = {
        "empty_file": "empty",
        "truncated": "truncated",
        "corrupt": "corrupt",
        "too_many_pixels": "limit",
        "not_an_image": "not an image",
        "unsupported_video": "video",
        "unsupported_image": "not supported",
    }
    assert reason_words[expected_type] in err.message


def test_exif_rotation_is_applied_not_ignored() -> None:
    data, upright, _ = GOOD["exif_rotated.jpg"]
    stored = np.asarray(Image.open(io.BytesIO(data)))
    assert stored.shape[:2] == upright.shape[1::-1]  # the file really is stored turned
    assert decode_image(data, DEFAULT_MAX_PIXELS).shape == upright.shape


def test_animated_gif_gives_first_frame_only() -> None:
    data, first, _ = GOOD["animated.gif"]
    assert Image.open(io.BytesIO(data)).n_frames == 3
    np.testing.assert_array_equal(decode_image(data, DEFAULT_MAX_PIXELS), first)


def test_max_pixels_is_inclusive_and_configurable() -> None:
    data = encode(Image.fromarray(quadrants(48, 64)), "PNG")
    assert decode_image(data, 48 * 64).shape == (48, 64, 3)
    with pytest.raises(DecodeError) as caught:
        decode_image(data, 48 * 64 - 1)
    assert caught.value.error_type == "too_many_pixels"
    assert "48" in caught.value.message and "3,071" in caught.value.message


def test_huge_declared_size_is_refused_from_the_header() -> None:
    # 10 gigapixels declared in a ~100-byte file: allocating it would need 30 GB.
    data, _ = BAD["bomb_100k_x_100k.png"]
    assert len(data) < 200
    with pytest.raises(DecodeError) as caught:
        decode_image(data, DEFAULT_MAX_PIXELS)
    assert caught.value.error_type == "too_many_pixels"


@pytest.mark.parametrize("pillow_limit", [2000, 3000])
def test_pillow_bomb_guard_never_escapes(monkeypatch: pytest.MonkeyPatch, pillow_limit: int) -> None:
    """Pillow's own global limit (a warning above it, an error above twice it) must neither
    crash nor spam a run: each image decodes or becomes a too_many_pixels error."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)  # our images: 3072 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, (data, expected, _) in GOOD.items():
            try:
                assert decode_image(data, DEFAULT_MAX_PIXELS).shape == expected.shape
            except DecodeError as err:
                assert err.error_type == "too_many_pixels", f"{name}: {err}"


def test_decode_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(DecodeError("truncated", "truncated PNG: cut")))
    assert (err.error_type, err.message) == ("truncated", "truncated PNG: cut")


# --- DecodeStage -------------------------------------------------------------------------------


def _batch(uris: list[str], sizes: list[int]) -> dict[str, np.ndarray]:
    return {"uri": np.array(uris, dtype=object), "size": np.array(sizes, dtype=np.int64)}


def _listed(directory: Path) -> dict[str, np.ndarray]:
    files = sorted(p for p in directory.iterdir() if p.is_file())
    return _batch([str(p) for p in files], [p.stat().st_size for p in files])


def test_stage_mixed_directory_one_row_per_input(tmp_path: Path) -> None:
    expected_errors = write_bad_inputs(tmp_path)
    good_names = write_odd_good_images(tmp_path)
    out = DecodeStage(StorageSource(StorageConfig()), InputConfig())(_listed(tmp_path))

    assert list(out) == OUTPUT_COLUMNS
    assert len(out["uri"]) == len(expected_errors) + len(good_names)
    assert out["frame_index"].dtype == np.int32 and out["width"].dtype == np.int32
    assert out["timestamp_s"].dtype == np.float64 and np.isnan(out["timestamp_s"]).all()
    for i, uri in enumerate(out["uri"]):
        name = Path(uri).name
        assert out["item_id"][i] == item_id(uri, 0)
        if name in expected_errors:
            assert (out["error_stage"][i], out["error_type"][i]) == ("decode", expected_errors[name])
            assert out["error_message"][i] and out["pixels"][i] == b""
            assert out["width"][i] == out["height"][i] == 0
        else:
            assert out["error_type"][i] == "" and out["error_message"][i] == ""
            rgb = decode_image((tmp_path / name).read_bytes(), DEFAULT_MAX_PIXELS)
            assert (out["height"][i], out["width"][i]) == rgb.shape[:2]
            assert out["pixels"][i] == rgb.tobytes()


def test_stage_refuses_oversized_file_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(encode(Image.fromarray(quadrants()), "PNG"))
    never_written = tmp_path / "listed_but_absent.jpg"  # reading it would fail with not_found
    stage = DecodeStage(StorageSource(StorageConfig()), InputConfig(max_bytes=100))
    out = stage(_batch([str(big), str(never_written)], [big.stat().st_size, 10**9]))
    assert list(out["error_type"]) == ["too_large", "too_large"]
    assert "input.max_bytes" in out["error_message"][1]


def test_stage_missing_file_and_custom_stage_name(tmp_path: Path) -> None:
    out = DecodeStage(StorageSource(StorageConfig()), InputConfig(), stage_name="decode_frames")(
        _batch([str(tmp_path / "gone.jpg")], [1234])
    )
    assert (out["error_stage"][0], out["error_type"][0]) == ("decode_frames", "not_found")


def test_stage_large_video_is_refused_from_its_head(tmp_path: Path) -> None:
    # Above the peek threshold the stage sniffs a ranged head before fetching the whole file.
    video = tmp_path / "long.mov"
    ftyp = (20).to_bytes(4, "big") + b"ftypqt  " + b"\x00" * 8
    video.write_bytes(ftyp + b"\x00" * (9 * 1024 * 1024))
    out = DecodeStage(StorageSource(StorageConfig()), InputConfig())(_batch([str(video)], [video.stat().st_size]))
    # A MOV header over zeros: refused as a video, or as a broken one where PyAV decodes videos.
    assert out["error_type"][0] == FAKE_VIDEO_ERROR
    assert ("MOV video" if FAKE_VIDEO_ERROR == "unsupported_video" else "corrupt video") in out["error_message"][0]


def test_stage_output_converts_to_typed_arrow_even_when_empty(tmp_path: Path) -> None:
    from ray.data.block import (
        BlockAccessor,  # the conversion map_batches applies to our output
    )

    write_odd_good_images(tmp_path)
    stage = DecodeStage(StorageSource(StorageConfig()), InputConfig())
    for batch in (_listed(tmp_path), _batch([], [])):
        schema = BlockAccessor.batch_to_block(stage(batch)).schema
        assert str(schema.field("uri").type) == "string"
        assert str(schema.field("error_message").type) == "string"
        assert str(schema.field("pixels").type) == "binary"
        assert str(schema.field("height").type) == "int32"


def test_stage_reads_from_s3(s3_bucket: str) -> None:
    storage = StorageConfig()
    good_uri = join(s3_bucket, "imgs", "a.webp")
    bad_uri = join(s3_bucket, "imgs", "b.png")
    good_data, expected, _ = GOOD["lossless.webp"]
    write_bytes(good_uri, good_data, storage)
    write_bytes(bad_uri, BAD["truncated.png"][0], storage)
    out = DecodeStage(StorageSource(storage), InputConfig())(
        _batch([good_uri, bad_uri], [len(good_data), len(BAD["truncated.png"][0])])
    )
    assert out["pixels"][0] == expected.tobytes()
    assert out["error_type"][1] == "truncated"


KNOWN_ERROR_TYPES = {
    "empty_file", "truncated", "corrupt", "not_an_image", "too_many_pixels", "unsupported_image",
}


def _mutate(data: bytes, case: int, rng: np.random.Generator) -> bytes:
    damaged = bytearray(data)
    if case % 3 == 0:  # a few random bytes overwritten
        for _ in range(int(rng.integers(1, 8))):
            damaged[int(rng.integers(0, len(damaged)))] = int(rng.integers(0, 256))
        return bytes(damaged)
    if case % 3 == 1:  # cut anywhere
        return bytes(damaged[: int(rng.integers(1, len(damaged)))])
    a, b = sorted(int(x) for x in rng.integers(0, len(damaged), 2))  # a block moved to the end
    return bytes(damaged[:a] + damaged[b:] + damaged[a:b])


def test_fuzzed_images_decode_or_fail_with_a_known_type() -> None:
    """Hundreds of damaged variants of the odd images: nothing but DecodeError ever escapes."""
    rng = np.random.default_rng(0)
    seeds = [data for data, _, _ in GOOD.values()]
    outcomes = set()
    for case in range(900):
        data = _mutate(seeds[case % len(seeds)], case, rng)
        try:
            rgb = decode_image(data, 10**7)
        except DecodeError as err:
            assert err.error_type in KNOWN_ERROR_TYPES and err.message, err
            outcomes.add(err.error_type)
        else:
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
            outcomes.add("ok")
    assert {"ok", "truncated", "corrupt"} <= outcomes  # the mutations really exercise each path
