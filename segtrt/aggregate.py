"""Accumulate Gaussian-weighted patch logits into a whole-volume prediction, on the device."""

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
        """Add one patch's logits (K, *patch) at ``window``."""
        region = (slice(None), *window.to_slices())
        self.logits[region].addcmul_(patch_logits.to(self.logits.dtype), self.importance)
        self.weights[window.to_slices()] += self.importance

    def add_batch(self, windows: Sequence[Window], batch_logits: torch.Tensor) -> None:
        """Add (N, K, *patch) logits at ``windows`` (len N)."""
        for window, patch_logits in zip(windows, batch_logits):
            self.add(window, patch_logits)

    def finalize(self) -> torch.Tensor:
        """Averaged logits (K, Z, Y, X); the accumulator must not be used afterwards."""
        self.logits /= self.weights
        return self.logits


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
