"""windows.py against nnU-Net v2's own sliding-window helpers."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from segtrt.windows import (
    axis_steps,
    compute_windows,
    gaussian_importance_map,
    mirror_combinations,
    padding_for,
)

from nnunetv2.inference import sliding_window_prediction as sw
@pytest.mark.parametrize("image_size", [(32, 32, 32), (33, 70, 41), (128, 161, 97), (300, 512, 512)])
@pytest.mark.parametrize("step", [0.5, 0.33, 0.75, 1.0])
def test_steps_match_nnunet(image_size, step):
    patch = (32, 48, 40)
    size = tuple(max(s, p) for s, p in zip(image_size, patch))
    expected = sw.compute_steps_for_sliding_window(size, patch, step)
    assert [axis_steps(s, p, step) for s, p in zip(size, patch)] == expected
    windows = compute_windows(size, patch, step)
    assert len(windows) == int(np.prod([len(e) for e in expected]))
    assert windows[-1].start == tuple(s - p for s, p in zip(size, patch))


@pytest.mark.parametrize("patch", [(32, 48, 40), (96, 160, 160), (7, 9, 11)])
def test_gaussian_matches_nnunet(patch):
    ref = sw.compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float64, device=torch.device("cpu"))
    ours = gaussian_importance_map(patch)
    # ours is float32; nnU-Net's float64 reference differs by float32 rounding only
    assert_allclose(ours, ref.numpy(), rtol=1e-6, atol=1e-9)
    assert ours.min() > 0 and ours.max() == pytest.approx(10.0)


def test_padding_is_centred_extra_voxel_high():
    assert padding_for((10, 40, 3), (16, 32, 8)) == ((3, 3), (0, 0), (2, 3))


def test_mirror_combinations_cover_all_subsets():
    combos = mirror_combinations((2, 0, 1))
    assert combos[0] == ()
    assert len(combos) == 8 and len(set(combos)) == 8
    assert mirror_combinations(()) == [()]


def test_step_size_out_of_range_is_rejected():
    with pytest.raises(ValueError):
        axis_steps(100, 32, 0.0)
