"""COCO RLE must be bit-exact with pycocotools, both ways."""

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from samflow.schemas import rle


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((7, 5), bool)
    yield np.ones((4, 9), bool)
    yield np.zeros((1, 1), bool)
    yield np.ones((1, 1), bool)
    for h, w, p in [(13, 17, 0.5), (64, 48, 0.05), (101, 3, 0.95), (33, 257, 0.3)]:
        yield rng.random((h, w)) < p
    blob = np.zeros((120, 90), bool)
    blob[20:80, 10:70] = True
    yield blob


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_encode_matches_pycocotools(mask):
    ours = rle.encode(mask)
    theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"].decode("ascii")
    assert ours["size"] == list(theirs["size"])
    assert rle.area(ours) == int(coco_mask.area(theirs))
    assert rle.to_bbox(ours) == pytest.approx(coco_mask.toBbox(theirs).tolist())


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_decode_round_trip(mask):
    theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    decoded = rle.decode({"size": list(theirs["size"]), "counts": theirs["counts"].decode()})
    np.testing.assert_array_equal(decoded, mask)


@pytest.mark.parametrize("counts", [[5, 2], [5, 8], "52", "0="], ids=["list-short", "list-long", "short", "long"])
def test_decode_rejects_counts_that_do_not_cover_the_image(counts):
    with pytest.raises(ValueError):
        rle.decode({"size": [3, 4], "counts": counts})


def test_decode_takes_a_valid_string_pycocotools_would_not_write():
    # runs 0, 2, 0, 2 (an empty run inside): the same mask as the canonical "04"
    assert rle.decode({"size": [2, 2], "counts": "02000"}).all()


def test_box_and_area_of_list_counts():
    assert rle.to_bbox({"size": [3, 4], "counts": [4, 2, 6]}) == [1.0, 1.0, 1.0, 2.0]
    assert rle.area({"size": [3, 4], "counts": [4, 2, 6]}) == 2
