"""Sliding-window prediction over a preprocessed volume, on the device.

The network is any callable ``(N, C, *patch) -> (N, K, *patch)`` (a Runner, or a lambda in
tests), so tiling never knows the backend. Several patches and all mirror flips go through one
call when they fit; several networks (folds) are averaged like nnU-Net averages folds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from segtrt.aggregate import LogitAccumulator
from segtrt.windows import Window, compute_windows, gaussian_importance_map, mirror_combinations, padding_for

log = logging.getLogger(__name__)

PatchPredictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SlidingWindowOptions:
    """patch_size (z, y, x) voxels; step_size as a fraction of the patch; mirror_axes spatial (0 = z)."""

    patch_size: tuple[int, ...]
    num_classes: int
    step_size: float = 0.5
    mirror_axes: tuple[int, ...] = ()
    batch_size: int = 4
    max_call_batch: int | None = None
    fixed_call_batch: int | None = None
    accumulate_dtype: torch.dtype = torch.float32


def sliding_window_logits(
    data: torch.Tensor,
    predictors: Sequence[PatchPredictor],
    options: SlidingWindowOptions,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Average logits of ``predictors`` over windows covering ``data``.

    data: (C, Z, Y, X) float32 on the device the predictors use. Returns (K, Z, Y, X) logits in
    ``options.accumulate_dtype`` on that device (padding removed). ``progress`` is called with
    (windows just finished, total windows) after each group.
    """
    patch = tuple(options.patch_size)
    pads = padding_for(data.shape[1:], patch)
    padded = _pad(data, pads)
    windows = compute_windows(padded.shape[1:], patch, options.step_size)
    importance = torch.from_numpy(gaussian_importance_map(patch)).to(data.device)
    acc = LogitAccumulator(options.num_classes, padded.shape[1:], importance, options.accumulate_dtype)
    flips = mirror_combinations(options.mirror_axes)
    log.debug("%d windows of %s, %d flips, %d networks", len(windows), patch, len(flips), len(predictors))
    for group in _groups(windows, options.batch_size):
        patches = torch.stack([padded[(slice(None), *w.to_slices())] for w in group])
        for predict in predictors:
            acc.add_batch(group, _predict_mirrored(predict, patches, flips, options))
        if progress is not None:
            progress(len(group), len(windows))
    logits = acc.finalize()
    return logits[(slice(None), *_unpad_slices(pads, padded.shape[1:]))]


def _predict_mirrored(
    predict: PatchPredictor, patches: torch.Tensor, flips: list[tuple[int, ...]], options: SlidingWindowOptions
) -> torch.Tensor:
    """Mean over flips of un-flipped logits for (N, C, *patch) patches -> (N, K, *patch) float32."""
    count = patches.shape[0]
    batch = torch.cat([_flip(patches, axes) for axes in flips]) if len(flips) > 1 else patches
    logits = _call_in_chunks(predict, batch, options)
    total = None
    for index, axes in enumerate(flips):
        part = _flip(logits[index * count : (index + 1) * count], axes).float()
        total = part if total is None else total.add_(part)
    return total / len(flips) if len(flips) > 1 else total


def _call_in_chunks(predict: PatchPredictor, batch: torch.Tensor, options: SlidingWindowOptions) -> torch.Tensor:
    """Run ``predict`` over ``batch`` in calls the backend accepts; pad a static-batch graph's last call."""
    limit = options.fixed_call_batch or options.max_call_batch or batch.shape[0]
    starts = range(0, batch.shape[0], limit)
    outputs = []
    for start in starts:
        chunk = batch[start : start + limit]
        real = chunk.shape[0]
        if options.fixed_call_batch and real < limit:
            chunk = torch.cat([chunk, chunk.new_zeros((limit - real, *chunk.shape[1:]))])
        out = predict(chunk.contiguous())[:real]
        # a runner may reuse its output buffer on the next call: copy when there is one
        outputs.append(out if len(starts) == 1 else out.clone())
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _flip(tensor: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Flip spatial ``axes`` (0 = z) of an (N, C, Z, Y, X) tensor; () returns the tensor itself."""
    return torch.flip(tensor, [a + 2 for a in axes]) if axes else tensor


def _groups(windows: list[Window], size: int) -> Iterator[list[Window]]:
    for start in range(0, len(windows), max(size, 1)):
        yield windows[start : start + size]


def _pad(data: torch.Tensor, pads: tuple[tuple[int, int], ...]) -> torch.Tensor:
    if not any(before or after for before, after in pads):
        return data
    flat = [value for before_after in reversed(pads) for value in before_after]
    return F.pad(data, flat, mode="constant", value=0.0)


def _unpad_slices(pads: tuple[tuple[int, int], ...], padded_shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(before, size - after) for (before, after), size in zip(pads, padded_shape))
