"""z-streamed aggregation: when to use it, and the host tensor that receives the finished slices.

Whole-volume accumulators cost K x padded voxels x dtype bytes on the device (a 117-class model on a
600 x 266 x 266 volume: 20 GB in float32). Streaming keeps only a patch-tall slab of them on the
device (segtrt.aggregate.SlabAccumulator) and parks every finished slice on the host as float16,
where export (segtrt.postprocess, ``device=``) fetches a few channels at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from segtrt.aggregate import SlabAccumulator
from segtrt.config import STREAM_MODES
from segtrt.errors import SettingsError
from segtrt.windows import padding_for


#: ``stream="auto"`` streams on CUDA when the whole-volume accumulators would exceed this many bytes.
AUTO_STREAM_BYTES = 4 << 30

#: dtype of the finished logits parked on the host.
HOST_DTYPE = torch.float16


@dataclass(frozen=True)
class StreamChoice:
    """How one case aggregates its logits, for the log and the run report.

    streamed: z-streamed with host logits (True) or whole-volume accumulators on the device (False).
    accumulator_bytes: what the whole-volume accumulators would take on the device.
    reason: one line with the mode and the numbers behind the choice.
    """

    streamed: bool
    accumulator_bytes: int
    reason: str


def check_stream_mode(mode: str) -> None:
    """Raise a SettingsError unless ``mode`` is one of :data:`segtrt.config.STREAM_MODES`."""
    if mode not in STREAM_MODES:
        raise SettingsError(f"stream (--stream) must be one of {', '.join(STREAM_MODES)}, got {mode!r}")


def padded_shape(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """Spatial shape (z, y, x) after the sliding window pads axes smaller than the patch."""
    return tuple(int(s) + before + after for s, (before, after) in zip(shape, padding_for(shape, patch_size)))


def whole_volume_bytes(num_classes: int, padded: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes of the whole-volume accumulators: (K, *padded) logits plus (*padded) weights in ``dtype``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (num_classes + 1) * math.prod(int(s) for s in padded) * itemsize


def choose_streaming(
    mode: str,
    num_classes: int,
    padded: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    limit_bytes: int = AUTO_STREAM_BYTES,
) -> StreamChoice:
    """Decide between whole-volume and z-streamed aggregation (pure: no allocation, no logging).

    mode: "on" / "off" are obeyed on any device; "auto" streams only on CUDA devices, when
    :func:`whole_volume_bytes` exceeds ``limit_bytes`` (the CPU's memory is the host anyway).
    """
    check_stream_mode(mode)
    size = whole_volume_bytes(num_classes, padded, dtype)
    numbers = (f"whole-volume accumulators {size / 2**30:.2f} GiB for {num_classes} classes x "
               f"{'x'.join(str(int(s)) for s in padded)} voxels in {str(dtype).replace('torch.', '')}")
    if mode != "auto":
        streamed = mode == "on"
        why = f"stream={mode} requested"
    elif device.type != "cuda":
        streamed, why = False, f"stream=auto on {device.type}: whole volume"
    else:
        streamed = size > limit_bytes
        relation = ">" if streamed else "<="
        why = f"stream=auto: {relation} {limit_bytes / 2**30:.2f} GiB limit on {device}"
    label = "z-streamed, float16 logits on the host" if streamed else "whole volume on the device"
    return StreamChoice(streamed, size, f"{label} ({why}; {numbers})")


class HostLogits:
    """(K, Z, Y, X) float16 logits on the host, filled z-slab by z-slab from a SlabAccumulator.

    shape: the un-padded (Z, Y, X); pads: the sliding window's ((before, after), ...) per axis.
    The tensor is pinned when ``device`` is CUDA, and each channel of a slab goes over with one
    asynchronous copy into a contiguous host region. The copy's device source is a temporary: the
    caching allocator hands its memory out again only to work queued after the copy on the same
    stream, so it cannot be overwritten early. :meth:`finish` waits for the copies before the host
    tensor is handed out. torch's pinned allocator rounds the block up to a power of two and keeps it
    cached for the next case of a similar size (a 9.9 GB tensor holds 16 GiB of page-locked memory).
    """

    def __init__(self, num_classes: int, shape: Sequence[int], pads: Sequence[tuple[int, int]],
                 device: torch.device) -> None:
        self.device = device
        self.pads = tuple(pads)
        self.tensor = torch.empty((num_classes, *shape), dtype=HOST_DTYPE, pin_memory=device.type == "cuda")
        self._yx = tuple(slice(before, before + int(n)) for (before, _), n in zip(self.pads[1:], shape[1:]))

    def write(self, acc: SlabAccumulator, count: int) -> None:
        """Copy slab slices [0, count) (z in [acc.origin, acc.origin + count), padded) to the host."""
        before, size = self.pads[0][0], self.tensor.shape[1]
        low = max(acc.origin, before)
        high = min(acc.origin + count, before + size)
        if low >= high:
            return  # padding only
        local = slice(low - acc.origin, high - acc.origin)
        for channel in range(self.tensor.shape[0]):
            slab = acc.averaged(channel, local)[(slice(None), *self._yx)].to(HOST_DTYPE).contiguous()
            self.tensor[channel, low - before : high - before].copy_(slab, non_blocking=True)

    def finish(self) -> torch.Tensor:
        """The filled (K, Z, Y, X) float16 host tensor, once every copy has landed."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return self.tensor
