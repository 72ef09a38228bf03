"""Pure sliding-window math: padding, window positions, the Gaussian importance map, mirror flips.

No devices, files or runtimes here. Shapes are spatial only, in array order (z, y, x), in voxels.
The rules follow nnU-Net v2 so that predictions agree with it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Window:
    """One patch position: the low corner (voxels) and the patch size, spatial axes only."""

    start: tuple[int, ...]
    size: tuple[int, ...]

    def to_slices(self) -> tuple[slice, ...]:
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size))


def padding_for(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(before, after) padding per axis so that every axis is at least the patch size.

    Centred like nnU-Net: the extra voxel of an odd difference goes to the high side.
    """
    pads = []
    for size, patch in zip(shape, patch_size):
        missing = max(patch - size, 0)
        pads.append((missing // 2, missing - missing // 2))
    return tuple(pads)


def axis_steps(size: int, patch: int, step_size: float) -> list[int]:
    """Start positions along one axis (size >= patch), spread evenly as nnU-Net does.

    n = ceil((size - patch) / (patch * step_size)) + 1 windows, the first at 0 and the last at
    size - patch, the rest rounded to the nearest voxel in between.
    """
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch}); pad first")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    count = int(math.ceil((size - patch) / (patch * step_size))) + 1
    if count == 1:
        return [0]
    stride = (size - patch) / (count - 1)
    return [int(np.round(stride * i)) for i in range(count)]


def compute_windows(shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[Window]:
    """All window positions covering ``shape`` (already padded to >= patch_size), z-major order."""
    steps = [axis_steps(s, p, step_size) for s, p in zip(shape, patch_size)]
    size = tuple(int(p) for p in patch_size)
    return [Window(tuple(start), size) for start in itertools.product(*steps)]


def gaussian_importance_map(
    patch_size: Sequence[int], sigma_scale: float = 1.0 / 8, value_scale: float = 10.0
) -> np.ndarray:
    """Gaussian weights of shape ``patch_size`` (float32), max = ``value_scale``, no zeros.

    A unit impulse at the patch centre (index size // 2) blurred with a Gaussian of sigma
    size * sigma_scale per axis, truncated at 4 sigma and normalised to unit sum per axis (what
    scipy's ``gaussian_filter`` does with mode='constant'); then scaled so the maximum equals
    ``value_scale``, and exact zeros replaced by the smallest non-zero weight.
    """
    profiles = [_gaussian_profile(int(n), n * sigma_scale) for n in patch_size]
    weights = profiles[0]
    for profile in profiles[1:]:
        weights = np.multiply.outer(weights, profile)
    weights = weights / weights.max() * value_scale
    nonzero = weights[weights > 0]
    weights[weights == 0] = nonzero.min()
    return weights.astype(np.float32)


def _gaussian_profile(size: int, sigma: float) -> np.ndarray:
    """1D sampled Gaussian centred at size // 2, truncated at radius int(4 sigma + 0.5), unit sum."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    profile = np.zeros(size, dtype=np.float64)
    centre = size // 2
    for offset, value in zip(offsets.astype(int), kernel):
        if 0 <= centre + offset < size:
            profile[centre + offset] = value
    return profile


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every flip to run for test-time mirroring, the identity () first.

    ``axes`` are spatial axes (0 = z). Returns [(), (0,), (1,), ..., (0, 1), ..., (0, 1, 2)]:
    2 ** len(axes) combinations, as nnU-Net averages them.
    """
    combos: list[tuple[int, ...]] = [()]
    for count in range(1, len(axes) + 1):
        combos.extend(itertools.combinations(sorted(axes), count))
    return combos
