"""segtrt.resample against nnunetv2 2.8.1's resampling functions and scipy.ndimage.zoom.

Measured max abs errors (this file's data, unit-variance random volumes, CPU):
  spline order 3, float32 compute: 9.5e-7 (values up to ~4); float64 compute: 2.1e-14
  spline order 1, float32 compute: 2.4e-7;                     float64 compute: 8.9e-16
  1-D operator vs scipy zoom: orders 0-3 <= 7e-15, order 4 4e-14, order 5 1.4e-13
  torch method (F.interpolate) vs nnU-Net's: 0.0 on CPU
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from segtrt.resample import (
    ResamplingSpec,
    compute_new_shape,
    resample_data,
    resample_logits,
    resample_torch,
    axis_band,
    separate_axis,
)

# (channels + shape, current spacing, new spacing): what each case exercises
CASES = {
    "iso_up_odd_2ch": ((2, 9, 14, 11), (1.0, 1.0, 1.0), (0.7, 0.8, 1.3)),
    "iso_down_1ch": ((1, 9, 14, 11), (1.0, 1.0, 1.0), (1.6, 1.4, 1.9)),
    "aniso_z_source": ((1, 5, 20, 17), (4.0, 0.9, 0.9), (1.5, 1.5, 1.5)),
    "aniso_z_both_2ch": ((2, 5, 20, 17), (4.0, 0.9, 0.9), (2.5, 0.7, 0.7)),
    "aniso_y_source": ((1, 12, 7, 15), (0.8, 3.2, 0.8), (1.0, 1.0, 1.0)),
    "aniso_x_target_only": ((1, 12, 7, 15), (1.0, 1.0, 1.0), (1.0, 1.0, 5.0)),
    "single_slice": ((1, 1, 13, 10), (5.0, 1.0, 1.0), (5.0, 0.6, 0.6)),
}


@pytest.fixture(scope="module")
def nnunet() -> SimpleNamespace:
    """nnunetv2's resampling functions, the reference; tests that use them skip where it is absent."""
    from nnunetv2.preprocessing.resampling import default_resampling as default
    from nnunetv2.preprocessing.resampling import resample_torch as torch_based
    return SimpleNamespace(compute_new_shape=default.compute_new_shape,
                           determine_do_sep_z_and_axis=default.determine_do_sep_z_and_axis,
                           resample_data_or_seg_to_shape=default.resample_data_or_seg_to_shape,
                           resample_torch_fornnunet=torch_based.resample_torch_fornnunet)


def dense_operator(n_in: int, n_out: int, order: int, tolerance: float = 1e-300) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of segtrt's 1-D resize band (nothing dropped by default)."""
    starts, weights = axis_band(n_in, n_out, order, tolerance)
    columns = starts[:, None] + torch.arange(weights.shape[1])
    return torch.zeros(n_out, n_in, dtype=torch.float64).scatter_add_(1, columns, weights)


def _volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    "shape, spacing, new_spacing",
    [((13, 7, 9), (1.0, 1.0, 1.0), (0.5, 2.0, 1.5)),  # 9 / 1.5 * 1 = 6; 7 * 0.5 = 3.5 -> 4 (half to even)
     ((5, 512, 512), (5.0, 0.7, 0.7), (3.0, 0.8, 0.8)),
     ((25, 11, 3), (0.8000000119, 1.25, 2.5), (1.0, 1.0, 1.0))])
def test_compute_new_shape_matches_nnunet(shape, spacing, new_spacing, nnunet):
    expected = tuple(int(v) for v in nnunet.compute_new_shape(shape, spacing, new_spacing))
    assert compute_new_shape(shape, spacing, new_spacing) == expected


@pytest.mark.parametrize("current, new", [
    ((1, 1, 1), (1, 1, 1)), ((4, 1, 1), (1, 1, 1)), ((1, 1, 1), (1, 4, 1)), ((1, 3.5, 1), (1, 1, 1)),
    ((3, 1, 1), (1, 1, 1)), ((0.24, 1.25, 1.25), (1, 1, 1)), ((5, 5, 1), (1, 1, 1)), ((2, 2, 2), (9, 1, 1))])
@pytest.mark.parametrize("force", [None, True, False])
def test_separate_axis_matches_nnunet(current, new, force, nnunet):
    do_separate, axis = nnunet.determine_do_sep_z_and_axis(force, current, new, 3)
    expected = int(axis) if do_separate else None
    assert separate_axis(current, new, force, 3.0) == expected


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("n_in, n_out", [(7, 13), (13, 7), (1, 4), (4, 1), (30, 11), (6, 3), (2, 3)])
def test_axis_operator_matches_scipy_zoom(order, n_in, n_out):
    """One axis of skimage resize(mode='edge') == scipy zoom(mode='nearest', grid_mode=True)."""
    x = np.random.default_rng(n_in * 100 + n_out).normal(size=(n_in, 3))
    expected = ndimage.zoom(x, (n_out / n_in, 1), order=order, mode="nearest", grid_mode=True)
    got = (dense_operator(n_in, n_out, order) @ torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)  # measured <= 1.4e-13 (order 5)


@pytest.mark.parametrize("order", [3, 5])
@pytest.mark.parametrize("n_in, n_out", [(200, 77), (60, 151), (300, 300 + 1)])
def test_float32_band_drops_only_negligible_weights(order, n_in, n_out):
    """The band used for float32 compute is narrow, and what it leaves out is far below float32 steps."""
    x = np.random.default_rng(order).normal(size=(n_in, 2))
    expected = ndimage.zoom(x, (n_out / n_in, 1), order=order, mode="nearest", grid_mode=True)
    tolerance = torch.finfo(torch.float32).eps * 1e-3
    _, weights = axis_band(n_in, n_out, order, tolerance)
    assert weights.shape[1] < 60
    got = (dense_operator(n_in, n_out, order, tolerance) @ torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("order", [3, 1])
def test_resample_matches_nnunet_float64(name, order, nnunet):
    """Float64 compute on float64 input reproduces nnU-Net's float64 result to rounding."""
    shape, spacing, new_spacing = CASES[name]
    x = _volume(shape).astype(np.float64)
    new_shape = compute_new_shape(shape[1:], spacing, new_spacing)
    expected = nnunet.resample_data_or_seg_to_shape(
        x, new_shape, spacing, new_spacing, is_seg=False, order=order, order_z=0, force_separate_z=None)
    got = resample_logits(torch.from_numpy(x), new_shape, spacing, new_spacing, order=order,
                          compute_dtype=torch.float64)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)  # measured <= 2.1e-14


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("order", [3, 1])
def test_resample_data_float32_close_to_nnunet(name, order, nnunet):
    """Default float32 compute vs nnU-Net's float64 compute (float32 output)."""
    shape, spacing, new_spacing = CASES[name]
    x = _volume(shape, seed=1)
    new_shape = compute_new_shape(shape[1:], spacing, new_spacing)
    expected = nnunet.resample_data_or_seg_to_shape(
        x, new_shape, spacing, new_spacing, is_seg=False, order=order, order_z=0, force_separate_z=None)
    got = resample_data(torch.from_numpy(x), new_shape, spacing, new_spacing, order=order)
    assert got.dtype == torch.float32 and tuple(got.shape[1:]) == tuple(new_shape)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=2e-6)  # measured <= 9.5e-7


def test_order3_clips_overshoot_like_skimage(nnunet):
    """A step edge overshoots with a cubic spline; nnU-Net (skimage) clips to the input range."""
    x = np.zeros((1, 6, 6, 6), np.float32)
    x[:, :, :, 3:] = 100.0
    expected = nnunet.resample_data_or_seg_to_shape(
        x, (6, 6, 17), (1, 1, 1), (1, 1, 1), is_seg=False, order=3, order_z=0, force_separate_z=False)
    got = resample_data(torch.from_numpy(x), (6, 6, 17), (1, 1, 1), (1, 1, 1))
    unclipped = dense_operator(6, 17, 3) @ torch.from_numpy(x[0, 0, 0]).double()
    assert float(unclipped.min()) < -1.0 and float(unclipped.max()) > 101.0  # the clip does matter
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=2e-5)  # measured 7.6e-6 at 100


def test_float16_logits_come_back_float16_like_nnunet(nnunet):
    x = (_volume((3, 5, 9, 8), seed=2) * 4).astype(np.float16)
    spacing, new_spacing = (3.5, 1.0, 1.0), (4.0, 0.9, 0.7)
    new_shape = compute_new_shape(x.shape[1:], spacing, new_spacing)
    expected = nnunet.resample_data_or_seg_to_shape(
        x, new_shape, spacing, new_spacing, is_seg=False, order=1, order_z=0, force_separate_z=None)
    got = resample_logits(torch.from_numpy(x), new_shape, spacing, new_spacing)
    assert got.dtype == torch.float16 and expected.dtype == np.float16
    # both round a float32/float64 value to float16: at most one float16 step apart (measured 2.0e-3)
    np.testing.assert_allclose(got.float().numpy(), expected.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_same_shape_returns_input_values():
    x = torch.from_numpy(_volume((2, 4, 5, 6)))
    got = resample_data(x, (4, 5, 6), (1, 1, 1), (2, 2, 2))
    assert torch.equal(got, x)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("force", [None, False])
def test_resample_torch_matches_nnunet(name, force, nnunet):
    shape, spacing, new_spacing = CASES[name]
    x = _volume(shape, seed=3)
    new_shape = compute_new_shape(shape[1:], spacing, new_spacing)
    expected = nnunet.resample_torch_fornnunet(x, new_shape, spacing, new_spacing, is_seg=False,
                                        force_separate_z=force)
    got = resample_torch(torch.from_numpy(x), new_shape, spacing, new_spacing, force_separate_z=force)
    np.testing.assert_allclose(got.numpy(), np.asarray(expected), rtol=0, atol=1e-6)  # measured 0.0


def test_spec_dispatches_to_each_method():
    x = torch.from_numpy(_volume((1, 6, 7, 8), seed=4))
    args = ((9, 5, 8), (1.0, 1.0, 1.0), (0.7, 1.4, 1.0))
    spline = ResamplingSpec(method="spline", order=3, order_z=0, force_separate_z=None)
    torch_spec = ResamplingSpec(method="torch", force_separate_z=None)
    assert torch.equal(spline.apply(x, *args), resample_data(x, *args))
    assert torch.equal(torch_spec.apply(x, *args), resample_torch(x, *args))
    assert ResamplingSpec(method="none").apply(x, *args) is x


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_matches_cpu(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    shape, spacing, new_spacing = CASES[name]
    x = torch.from_numpy(_volume(shape, seed=5))
    new_shape = compute_new_shape(shape[1:], spacing, new_spacing)
    for function, kwargs in ((resample_data, {"order": 3}), (resample_logits, {"order": 1}),
                             (resample_torch, {})):
        cpu = function(x, new_shape, spacing, new_spacing, **kwargs)
        cuda = function(x.cuda(), new_shape, spacing, new_spacing, **kwargs)
        assert cuda.device.type == "cuda"
        np.testing.assert_allclose(cuda.cpu().numpy(), cpu.numpy(), rtol=0, atol=1e-6)
