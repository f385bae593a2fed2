"""The factored SAM 3 mask head's pieces equal the plain operations they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from samflow.models.sam3.masks import image_runs, phase_kernels, stacked_phase_kernels, upsampled_conv


@pytest.mark.parametrize("coarse, size", [((5, 7), (10, 14)), ((4, 4), (8, 8)), ((5, 7), (9, 13))])
def test_upsampled_conv_equals_conv_of_nearest_upsampling_plus_each_images_term(coarse, size):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, *coarse, generator=generator)
    weight = torch.randn(4, 6, 3, 3, generator=generator)
    term = torch.randn(2, 4, *size, generator=generator)  # two images: pairs 0, 1 of image 1, pair 2 of image 0
    expected = F.conv2d(F.interpolate(x, size=size, mode="nearest"), weight, padding=1) + term[[1, 1, 0]]
    got = upsampled_conv(x, stacked_phase_kernels(weight), weight, term, image_runs([1, 1, 0]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_image_runs_group_consecutive_pairs_of_one_image():
    assert image_runs([0, 0, 1, 1, 1, 2]) == [(0, 2, 0), (2, 5, 1), (5, 6, 2)]
    assert image_runs([3]) == [(0, 1, 3)]


def test_phase_kernels_sum_to_the_kernel_and_refuse_other_shapes():
    weight = torch.randn(3, 2, 3, 3)
    kernels = phase_kernels(weight)
    assert all(k.shape == (3, 2, 2, 2) for row in kernels for k in row)
    # every phase reads each of the 9 taps once: its 2x2 kernel sums to the 3x3 one
    for row in kernels:
        for k in row:
            torch.testing.assert_close(k.sum(dim=(2, 3)), weight.sum(dim=(2, 3)))
    with pytest.raises(ValueError, match="3x3"):
        phase_kernels(torch.randn(3, 2, 5, 5))
