"""Sliding-window prediction over a preprocessed volume, on the device.

The network is any callable ``(N, C, *patch) -> (N, K, *patch)`` (a Runner, or a lambda in
tests), so tiling never knows the backend. Several patches and all mirror flips go through one
call when they fit; several networks (folds) are averaged like nnU-Net averages folds.

Two ways to aggregate, sharing the window groups, the mirrored prediction and the importance map:
:func:`sliding_window_logits` sums into whole-volume accumulators on the device;
:func:`streamed_window_logits` walks the rows of windows (same z start) in increasing z with a
patch-tall device slab and parks each finished z range on the host (segtrt.streaming).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from segtrt.aggregate import LogitAccumulator, SlabAccumulator
from segtrt.streaming import HostLogits
from segtrt.windows import Window, compute_windows, gaussian_importance_map, mirror_combinations, padding_for

log = logging.getLogger(__name__)

PatchPredictor = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


@functools.lru_cache(maxsize=8)
def importance_map(patch: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The Gaussian importance map of ``patch`` on ``device``, made once per (patch, device) and shared:
    read it, never write it. Building it on the host took 30 ms per whole-body case on the H200 machine
    (scripts/profile_case.py, 2026-12-03), time in which the GPU had nothing to do."""
    return torch.from_numpy(gaussian_importance_map(patch)).to(device)


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
    progress: Progress | None = None,
) -> torch.Tensor:
    """Average logits of ``predictors`` over windows covering ``data``, whole volume at once.

    data: (C, Z, Y, X) float32 on the device the predictors use. Returns (K, Z, Y, X) logits in
    ``options.accumulate_dtype`` on that device (padding removed). ``progress`` is called with
    (windows just finished, total windows) after each group.
    """
    tiling = _Tiling(data, predictors, options, progress)
    acc = LogitAccumulator(options.num_classes, tiling.padded.shape[1:], tiling.importance, options.accumulate_dtype)
    for group in _groups(tiling.windows, options.batch_size):
        tiling.add_group(group, acc)
    logits = acc.finalize()
    return logits[(slice(None), *_unpad_slices(tiling.pads, tiling.padded.shape[1:]))]


def streamed_window_logits(
    data: torch.Tensor,
    predictors: Sequence[PatchPredictor],
    options: SlidingWindowOptions,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The same average as :func:`sliding_window_logits`, with device memory for one patch-tall slab.

    data: (C, Z, Y, X) float32 on the predictors' device. Returns (K, Z, Y, X) float16 logits on the
    host (pinned when ``data`` is on CUDA; the copies have landed). Rows of windows go in increasing z,
    each in groups of at most ``options.batch_size``; after a row, the slices below the next row's
    start receive nothing more and move to the host. Equal to the whole-volume result rounded to
    float16 (relative 2**-11).
    """
    tiling = _Tiling(data, predictors, options, progress)
    depth = options.patch_size[0]
    acc = SlabAccumulator(options.num_classes, (depth, *tiling.padded.shape[2:]), tiling.importance,
                          options.accumulate_dtype)
    host = HostLogits(options.num_classes, data.shape[1:], tiling.pads, data.device)
    rows = _rows(tiling.windows)
    for index, row in enumerate(rows):
        stop = rows[index + 1][0].start[0] if index + 1 < len(rows) else tiling.padded.shape[1]
        done = stop - acc.origin
        assert 0 < done <= depth, f"rows {acc.origin} -> {stop} are further apart than the patch ({depth})"
        for group in _groups(row, options.batch_size):
            tiling.add_group(group, acc)
        host.write(acc, done)
        if index + 1 < len(rows):
            acc.advance(done)
    return host.finish()


class _Tiling:
    """What both aggregations share: padded data, windows, importance map, flips and the group step."""

    def __init__(self, data: torch.Tensor, predictors: Sequence[PatchPredictor], options: SlidingWindowOptions,
                 progress: Progress | None) -> None:
        patch = tuple(options.patch_size)
        self.pads = padding_for(data.shape[1:], patch)
        self.padded = _pad(data, self.pads)
        self.windows = compute_windows(self.padded.shape[1:], patch, options.step_size)
        self.importance = importance_map(patch, data.device)
        self.flips = mirror_combinations(options.mirror_axes)
        self.predictors, self.options, self.progress = list(predictors), options, progress
        log.debug("%d windows of %s, %d flips, %d networks", len(self.windows), patch, len(self.flips),
                  len(self.predictors))

    def add_group(self, group: list[Window], acc: LogitAccumulator) -> None:
        """Predict the windows of ``group`` with every network (and flip) and add them to ``acc``.

        Each call's output goes into the accumulator before the next call, scaled by
        1 / (flips x networks), and each window's weight is added once: the sums hold the average over
        networks and flips, never their total, so a float16 accumulator over several folds stays as far
        from overflow as with one. Device memory holds one call's output and one flipped patch.
        """
        patches = torch.stack([self.padded[(slice(None), *w.to_slices())] for w in group])
        scale = 1.0 / (len(self.flips) * len(self.predictors))
        for predict in self.predictors:
            for index, axes, logits in _mirrored_outputs(predict, patches, self.flips, self.options):
                acc.add_logits(group[index], logits, scale, axes)
        for window in group:
            acc.add_weight(window)
        if self.progress is not None:
            self.progress(len(group), len(self.windows))


def _mirrored_outputs(
    predict: PatchPredictor, patches: torch.Tensor, flips: list[tuple[int, ...]], options: SlidingWindowOptions
) -> Iterator[tuple[int, tuple[int, ...], torch.Tensor]]:
    """(patch index, flip axes, mirrored logits (K, *patch)) for every patch of (N, C, *patch) and flip.

    All flips of all patches go through ``predict`` in calls of the size the backend accepts; the
    logits are still mirrored (flip them back along the axes) and belong to the runner: consume each
    before asking for the next.
    """
    count = patches.shape[0]
    batch = torch.cat([_flip(patches, axes) for axes in flips]) if len(flips) > 1 else _flip(patches, flips[0])
    for first, logits in _call_in_chunks(predict, batch, options):
        # the batch is flip-major: row r holds flip r // count of patch r % count
        for offset in range(logits.shape[0]):
            row = first + offset
            yield row % count, flips[row // count], logits[offset]


def _call_in_chunks(
    predict: PatchPredictor, batch: torch.Tensor, options: SlidingWindowOptions
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, logits) of ``predict`` over ``batch`` in calls the backend accepts.

    A static-batch graph's last call is padded with zeros and its padding rows dropped. A runner may
    reuse its output buffer on the next call: consume each output before asking for the next.
    """
    limit = options.fixed_call_batch or options.max_call_batch or batch.shape[0]
    for start in range(0, batch.shape[0], limit):
        chunk = batch[start : start + limit]
        real = chunk.shape[0]
        if options.fixed_call_batch and real < limit:
            chunk = torch.cat([chunk, chunk.new_zeros((limit - real, *chunk.shape[1:]))])
        yield start, predict(chunk.contiguous())[:real]


def _flip(tensor: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Flip spatial ``axes`` (0 = z) of an (N, C, Z, Y, X) tensor; () returns the tensor itself."""
    return torch.flip(tensor, [a + 2 for a in axes]) if axes else tensor


def _groups(windows: list[Window], size: int) -> Iterator[list[Window]]:
    for start in range(0, len(windows), max(size, 1)):
        yield windows[start : start + size]


def _rows(windows: list[Window]) -> list[list[Window]]:
    """Windows split into rows sharing a z start, in the (z-major) order compute_windows gives."""
    rows: list[list[Window]] = []
    for window in windows:
        if rows and rows[-1][0].start[0] == window.start[0]:
            rows[-1].append(window)
        else:
            rows.append([window])
    return rows


def _pad(data: torch.Tensor, pads: tuple[tuple[int, int], ...]) -> torch.Tensor:
    if not any(before or after for before, after in pads):
        return data
    flat = [value for before_after in reversed(pads) for value in before_after]
    return F.pad(data, flat, mode="constant", value=0.0)


def _unpad_slices(pads: tuple[tuple[int, int], ...], padded_shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(before, size - after) for (before, after), size in zip(pads, padded_shape))
