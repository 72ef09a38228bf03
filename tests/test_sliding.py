"""Stitching properties of the sliding window (MONAI's best test, adapted) and its batching."""

import itertools

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from segtrt.sliding import SlidingWindowOptions, importance_map, sliding_window_logits
from segtrt.windows import gaussian_importance_map

SHAPES = [(17, 23, 31), (5, 7, 9), (32, 48, 40), (33, 49, 41), (70, 13, 100), (1, 60, 3)]


@pytest.mark.parametrize("shape,step", list(itertools.product(SHAPES, [0.5, 0.33, 1.0, 0.9])))
def test_scaled_identity_stitches_back(shape, step):
    patch = (16, 24, 20)
    data = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    opts = SlidingWindowOptions(patch_size=patch, num_classes=2, step_size=step, batch_size=3)
    out = sliding_window_logits(data, [lambda x: 2 * x], opts)
    assert out.shape == data.shape
    # float32 weighted average of identical values: error is rounding only (measured < 1e-6)
    assert_allclose(out.numpy(), 2 * data.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axes", [(0,), (1, 2), (0, 1, 2)])
def test_mirroring_of_equivariant_predictor_is_exact(axes):
    data = torch.randn((1, 21, 30, 26), generator=torch.Generator().manual_seed(1))
    opts = SlidingWindowOptions(patch_size=(16, 16, 16), num_classes=1, mirror_axes=axes, batch_size=2)
    out = sliding_window_logits(data, [lambda x: x - 1], opts)
    assert_allclose(out.numpy(), data.numpy() - 1, rtol=1e-5, atol=1e-5)


def test_mirroring_averages_flipped_predictions():
    """A predictor that is not flip-equivariant: z-ramp output; averaged over a z flip it becomes flat."""
    data = torch.zeros((1, 8, 8, 8))

    def ramp(x):
        z = torch.arange(x.shape[2], dtype=torch.float32).view(1, 1, -1, 1, 1)
        return z.expand(x.shape[0], 1, *x.shape[2:]).clone()

    opts = SlidingWindowOptions(patch_size=(8, 8, 8), num_classes=1, mirror_axes=(0,))
    out = sliding_window_logits(data, [ramp], opts)
    assert_allclose(out.numpy(), np.full((1, 8, 8, 8), 3.5), atol=1e-6)


def test_folds_are_averaged():
    data = torch.randn((1, 20, 20, 20))
    opts = SlidingWindowOptions(patch_size=(8, 8, 8), num_classes=1)
    out = sliding_window_logits(data, [lambda x: x, lambda x: 3 * x], opts)
    assert_allclose(out.numpy(), 2 * data.numpy(), rtol=1e-5, atol=1e-5)


def test_batches_respect_backend_limits():
    calls = []

    def record(x):
        calls.append(x.shape[0])
        return x * 1.0

    data = torch.randn((1, 30, 30, 30))
    fixed = SlidingWindowOptions(patch_size=(16, 16, 16), num_classes=1, batch_size=3, mirror_axes=(0,), fixed_call_batch=4)
    out = sliding_window_logits(data, [record], fixed)
    assert set(calls) == {4}, "a static-batch graph must always see its batch size"
    assert_allclose(out.numpy(), data.numpy(), rtol=1e-5, atol=1e-5)
    calls.clear()
    limited = SlidingWindowOptions(patch_size=(16, 16, 16), num_classes=1, batch_size=4, mirror_axes=(0, 1), max_call_batch=5)
    sliding_window_logits(data, [record], limited)
    assert max(calls) <= 5 and sum(calls) == 27 * 4  # 3x3x3 windows x 4 flips


def test_progress_counts_every_window():
    seen = []
    opts = SlidingWindowOptions(patch_size=(8, 8, 8), num_classes=1, batch_size=3)
    sliding_window_logits(torch.zeros((1, 16, 16, 16)), [lambda x: x], opts, progress=lambda done, total: seen.append((done, total)))
    assert sum(d for d, _ in seen) == 27 and {t for _, t in seen} == {27}


def test_float16_accumulation_matches_float32():
    """--accumulate float16 halves accumulator memory; rounding stays far below logit differences."""
    data = torch.randn((3, 40, 37, 29), generator=torch.Generator().manual_seed(3)) * 20
    common = dict(patch_size=(16, 16, 16), num_classes=3, mirror_axes=(0, 2))
    full = sliding_window_logits(data, [lambda x: x * 1.5], SlidingWindowOptions(**common))
    half = sliding_window_logits(
        data, [lambda x: x * 1.5], SlidingWindowOptions(**common, accumulate_dtype=torch.float16)
    )
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all(), "window corners must not turn into 0 / 0"
    # Every flip of every window is added on its own (no float32 per-group sum, to save memory): up to
    # 8 windows x 4 flips = 32 fp16 additions per voxel, each rounding the product and the sum to 11
    # significant bits: worst case ~64 * 2**-11 = 3e-2 relative; measured max 1.8e-2 relative.
    assert_allclose(half.float().numpy(), full.numpy(), rtol=3e-2, atol=0.1)
    assert (half.float().argmax(0) == full.argmax(0)).float().mean() > 0.999


def test_runner_reusing_its_output_buffer():
    """CUDA-graph and TensorRT runners return the same buffer every call: each output is used before the next."""
    buffer = torch.empty((2, 1, 16, 16, 16))

    def reuse(x):
        return torch.mul(x, 2.0, out=buffer[: x.shape[0]])

    data = torch.randn((1, 30, 21, 16), generator=torch.Generator().manual_seed(5))
    opts = SlidingWindowOptions(patch_size=(16, 16, 16), num_classes=1, batch_size=3, mirror_axes=(0, 1),
                                max_call_batch=2)
    out = sliding_window_logits(data, [reuse], opts)
    assert_allclose(out.numpy(), 2 * data.numpy(), rtol=1e-5, atol=1e-5)


def test_the_importance_map_is_made_once_per_patch_and_device_and_never_changed():
    patch = (8, 12, 10)
    shared = importance_map(patch, torch.device("cpu"))
    assert importance_map(patch, torch.device("cpu")) is shared
    assert importance_map((8, 12, 12), torch.device("cpu")) is not shared
    expected = gaussian_importance_map(patch)
    np.testing.assert_array_equal(shared.numpy(), expected)
    data = torch.randn(1, 20, 25, 22)
    first = [sliding_window_logits(data, [lambda x: x.repeat(1, 2, 1, 1, 1)],
                                   SlidingWindowOptions(patch, 2, accumulate_dtype=dtype)) for dtype in
             (torch.float32, torch.float16)]
    second = sliding_window_logits(data, [lambda x: x.repeat(1, 2, 1, 1, 1)], SlidingWindowOptions(patch, 2))
    np.testing.assert_array_equal(shared.numpy(), expected)  # used by three runs, unchanged
    assert torch.equal(first[0], second)
