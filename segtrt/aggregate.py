"""Accumulate Gaussian-weighted patch logits on the device: over a whole volume, or a z-slab of it."""

from __future__ import annotations

from typing import Sequence

import torch

from segtrt.windows import Window


class LogitAccumulator:
    """Weighted sum of patch logits and of their weights over a (padded) volume.

    logits: (K, Z, Y, X) in ``dtype``; weights: (Z, Y, X) in ``dtype``. Each added patch is
    multiplied by the importance map (the patch's shape, on the same device) before summing;
    ``finalize`` divides the sums in place and returns the averaged logits.
    """

    def __init__(
        self,
        num_classes: int,
        shape: Sequence[int],
        importance: torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        device = importance.device
        self.logits = torch.zeros((num_classes, *shape), dtype=dtype, device=device)
        self.weights = torch.zeros(tuple(shape), dtype=dtype, device=device)
        self.importance = _without_zeros(importance.to(dtype))

    def add(self, window: Window, patch_logits: torch.Tensor) -> None:
        """Add one patch's logits (K, *patch) at ``window``, with the patch's weight."""
        self.add_logits(window, patch_logits)
        self.add_weight(window)

    def add_logits(self, window: Window, patch_logits: torch.Tensor, scale: float = 1.0,
                   flip_axes: tuple[int, ...] = ()) -> None:
        """Add ``scale`` x importance x logits (K, *patch) at ``window``, without its weight.

        flip_axes: spatial axes (0 = z) along which ``patch_logits`` are mirrored; they are flipped
        back first. float16 logits go into a float32 accumulator without a float32 copy (addcmul_
        promotes), so the extra device memory is at most one flipped patch.
        """
        if flip_axes:
            patch_logits = torch.flip(patch_logits, [a + 1 for a in flip_axes])
        region = (slice(None), *self._local_slices(window))
        self.logits[region].addcmul_(patch_logits, self.importance, value=scale)

    def add_weight(self, window: Window) -> None:
        """Add the importance map to the weights at ``window`` (once per added prediction)."""
        self.weights[self._local_slices(window)] += self.importance

    def finalize(self) -> torch.Tensor:
        """Averaged logits (K, Z, Y, X); the accumulator must not be used afterwards."""
        self.logits /= self.weights
        return self.logits

    def _local_slices(self, window: Window) -> tuple[slice, ...]:
        return window.to_slices()


class SlabAccumulator(LogitAccumulator):
    """A :class:`LogitAccumulator` over z in [origin, origin + depth) of a taller padded volume.

    shape: (depth, Y, X), depth = the patch's z size, so that every window of one row (windows
    sharing a z start equal to ``origin``) fits. Windows are given in volume coordinates. Once a row
    is done, slices below the next row's start are final: read them with :meth:`averaged`, then
    :meth:`advance` the slab to the next row.
    """

    def __init__(self, *args, **kwargs) -> None:
        """The arguments of :class:`LogitAccumulator`, with ``shape`` = (depth, Y, X)."""
        super().__init__(*args, **kwargs)
        self.origin = 0  # z of the slab's first slice in the padded volume

    @property
    def depth(self) -> int:
        return self.weights.shape[0]

    def averaged(self, channel: int, local_z: slice) -> torch.Tensor:
        """Averaged logits of one channel over slab slices ``local_z``: a new (n, Y, X) tensor in ``dtype``."""
        return self.logits[channel, local_z] / self.weights[local_z]

    def advance(self, count: int) -> None:
        """Move the slab ``count`` slices up in z (0 < count <= depth); the new top slices are zero.

        The kept slices move down in blocks of at most ``count`` slices, bottom first, so that no
        block overlaps the slices it reads (no whole-slab temporary on the device).
        """
        if not 0 < count <= self.depth:
            raise ValueError(f"can advance a slab of {self.depth} slices by 1..{self.depth}, got {count}")
        for start in range(0, self.depth - count, count):
            stop = min(start + count, self.depth - count)
            self.logits[:, start:stop] = self.logits[:, start + count : stop + count]
            self.weights[start:stop] = self.weights[start + count : stop + count]
        self.logits[:, self.depth - count :].zero_()
        self.weights[self.depth - count :].zero_()
        self.origin += count

    def _local_slices(self, window: Window) -> tuple[slice, ...]:
        low = window.start[0] - self.origin
        if low < 0 or low + window.size[0] > self.depth:
            raise ValueError(
                f"window at z {window.start[0]} (size {window.size[0]}) is outside the slab "
                f"[{self.origin}, {self.origin + self.depth})"
            )
        return (slice(low, low + window.size[0]), *window.to_slices()[1:])


def _without_zeros(weights: torch.Tensor) -> torch.Tensor:
    """Keep every weight usable in the accumulator's dtype.

    float32: the map already has no zeros (windows.gaussian_importance_map). float16: the Gaussian's
    corners (down to ~1e-9) underflow to 0 or to subnormals, where products with logits lose all
    precision and voxels covered only by corners become 0 / 0; they are raised to 1e-3 of the peak.
    This only changes relative weights where several window corners overlap.
    """
    if weights.dtype == torch.float16:
        return weights.clamp_min(weights.max() * 1e-3)
    return weights
