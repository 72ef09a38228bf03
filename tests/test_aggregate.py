"""Accumulators: the whole-volume sum and the z-slab that moves up a taller volume."""

import pytest
import torch
from numpy.testing import assert_allclose

from segtrt.aggregate import LogitAccumulator, SlabAccumulator
from segtrt.windows import Window


def _importance(shape) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) + 0.5


def test_slab_matches_whole_volume_slices():
    """Windows at z 0, 2, 4 (size 4) over 8 slices: each finished slab range equals the whole-volume sum."""
    patch, importance = (4, 3, 5), _importance((4, 3, 5))
    windows = [Window((z, 0, 0), patch) for z in (0, 2, 4)]
    logits = [torch.randn((2, *patch), generator=torch.Generator().manual_seed(z)) for z in range(3)]
    whole = LogitAccumulator(2, (8, 3, 5), importance)
    for window, patch_logits in zip(windows, logits):
        whole.add(window, patch_logits)
    expected = whole.finalize()
    slab = SlabAccumulator(2, patch, importance)
    done = []
    for index, (window, patch_logits) in enumerate(zip(windows, logits)):
        slab.add(window, patch_logits)
        count = 2 if index < 2 else 4
        done.append(torch.stack([slab.averaged(k, slice(0, count)) for k in range(2)]))
        if index < 2:
            slab.advance(2)
    assert slab.origin == 4
    assert_allclose(torch.cat(done, dim=1).numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_advance_moves_kept_slices_down_and_zeroes_the_top(count):
    slab = SlabAccumulator(3, (7, 2, 2), torch.ones((7, 2, 2)))
    slab.logits.copy_(torch.arange(3 * 7 * 4, dtype=torch.float32).view(3, 7, 2, 2))
    slab.weights.copy_(torch.arange(7 * 4, dtype=torch.float32).view(7, 2, 2))
    logits, weights = slab.logits.clone(), slab.weights.clone()
    slab.advance(count)
    assert torch.equal(slab.logits[:, : 7 - count], logits[:, count:])
    assert torch.equal(slab.weights[: 7 - count], weights[count:])
    assert not slab.logits[:, 7 - count :].any() and not slab.weights[7 - count :].any()
    assert slab.origin == count


def test_slab_refuses_windows_outside_it():
    slab = SlabAccumulator(1, (4, 2, 2), torch.ones((4, 2, 2)))
    slab.advance(2)
    with pytest.raises(ValueError, match="outside the slab"):
        slab.add(Window((0, 0, 0), (4, 2, 2)), torch.zeros((1, 4, 2, 2)))
    with pytest.raises(ValueError, match="advance"):
        slab.advance(5)


def test_float16_slab_keeps_corner_weights_above_zero():
    importance = torch.full((4, 2, 2), 10.0)
    importance[0, 0, 0] = 1e-9  # a Gaussian corner: 0 in float16 without the floor
    slab = SlabAccumulator(1, (4, 2, 2), importance, torch.float16)
    slab.add(Window((0, 0, 0), (4, 2, 2)), torch.full((1, 4, 2, 2), 3.0))
    assert torch.equal(slab.averaged(0, slice(0, 4)), torch.full((4, 2, 2), 3.0, dtype=torch.float16))
