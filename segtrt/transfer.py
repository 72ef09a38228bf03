"""Host <-> device copies of whole volumes through reusable page-locked staging buffers."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

log = logging.getLogger(__name__)

# Host copies of whole volumes are split over threads from this size on (numpy releases the GIL while
# copying). On the H200 machine (2026-12-03, scripts/transfer_probe.py) a 157 MB int16 CT went into the
# page-locked buffer in 28.6 ms on one thread and 5.0 ms on 8; a 79 MB label map out of it into ordinary
# memory in 12.9 ms and 1.9 ms. Below a few MB the threads' hand-off costs more than it saves.
PARALLEL_COPY_BYTES = 8 * 2**20
COPY_THREADS = 8


class Uploader:
    """Copies host arrays to ``device``; the arrays themselves are never modified.

    On the CPU the tensor shares the array's memory (callers copy before writing). To a CUDA device
    the bytes are copied into one page-locked staging buffer kept for the uploader's lifetime (grown
    to the largest volume seen) and sent asynchronously on the current stream. Page-locking memory is
    the slow part of a pinned copy (measured on an H200: 216 ms to pin a fresh 315 MB block, 8 ms to
    copy into an existing one, 6 ms host -> device), so it is paid once per run, not once per case.
    Before the buffer is reused, the previous copy out of it is waited for.

    An array that is a transposed view of contiguous memory (a Fortran-ordered volume, a nibabel array
    turned to (z, y, x), the benchmarks' synthetic CT) is copied in its memory order and put back in
    array order on the device: numpy's strided copy of such a 315 MB CT into the buffer took 0.33-0.47 s
    (1 GB/s; 0.03 s contiguous), the device's transpose well under a millisecond.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = _PageLocked()
        self._copied: torch.cuda.Event | None = None

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        """``array`` as a tensor of the same dtype and shape on the device."""
        if self.device.type != "cuda":
            return torch.from_numpy(np.ascontiguousarray(array))
        start = time.perf_counter()
        order = packed_order(array)
        source = array if order is None else array.transpose(order)  # a view in memory order: a plain copy
        staging = self._staging(source.shape, _torch_dtype(array.dtype))
        # numpy copies straight into the page-locked buffer (no torch.from_numpy of the source)
        host_copy(staging.numpy(), source)
        copied = time.perf_counter()
        tensor = staging.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(self.device))
        if order is not None:
            tensor = tensor.permute(tuple(int(i) for i in np.argsort(order))).contiguous()
        log.debug("upload %s %s%s: %.1f ms into the staging buffer", array.shape, array.dtype,
                  "" if order is None else f" (memory order {order})", (copied - start) * 1e3)
        return tensor

    def release(self) -> None:
        """Give the staging buffer back (after its last copy has finished)."""
        if self._copied is not None:
            self._copied.synchronize()
        self._pinned.release()
        self._copied = None

    @property
    def buffer(self) -> torch.Tensor | None:
        """The page-locked staging buffer held now (None before the first upload and after release)."""
        return self._pinned.tensor

    def _staging(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if self._copied is not None:
            self._copied.synchronize()  # the last upload has left the buffer
        return self._pinned.view(shape, dtype)


def packed_order(array: np.ndarray) -> tuple[int, ...] | None:
    """The axis order in which ``array`` is a C-contiguous block (``array.transpose(order)`` is), when it
    is not C-contiguous itself but a transposed view of one; None otherwise (C-contiguous already, or
    strided in another way: a slice, a flip, a broadcast). Axes of length 1 go last (their strides are
    irrelevant)."""
    if array.flags.c_contiguous or array.ndim < 2:
        return None
    order = tuple(sorted(range(array.ndim),
                         key=lambda a: (array.shape[a] == 1, -array.strides[a], a)))
    return order if array.transpose(order).flags.c_contiguous else None


class Downloader:
    """Copies device tensors back to host arrays through one page-locked buffer kept for its lifetime.

    A label map's copy to pageable memory (``tensor.cpu()``) ran at 1.4 GB/s on the H200 machine
    (2026-12-03, scripts/profile_case.py: 58 ms for a 79 MB whole-body label map, the largest single GPU
    interval of a warm case); into page-locked memory a copy runs at the link's speed, and numpy then
    copies it into an ordinary array that the caller owns (the buffer is reused by the next call). The
    buffer grows to the largest tensor seen. On the CPU the tensor's own memory is returned, as
    ``tensor.numpy()`` would. Not thread-safe: one downloader per predictor, called from its thread.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = _PageLocked()

    def __call__(self, tensor: torch.Tensor) -> np.ndarray:
        """``tensor``'s values as a host array of the same dtype and shape (a copy the caller owns)."""
        if tensor.device.type != "cuda":
            return tensor.numpy()
        start = time.perf_counter()
        staging = self._pinned.view(tuple(tensor.shape), tensor.dtype)
        staging.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(tensor.device).synchronize()
        pinned = staging.numpy()
        array = np.empty_like(pinned)  # ordinary memory, owned by the caller
        host_copy(array, pinned)
        log.debug("download %s %s: %.1f ms", tuple(tensor.shape), tensor.dtype, (time.perf_counter() - start) * 1e3)
        return array

    def release(self) -> None:
        """Give the buffer back (every copy out of it has finished: each call waits for its own)."""
        self._pinned.release()

    @property
    def buffer(self) -> torch.Tensor | None:
        """The page-locked buffer held now (None before the first download and after release)."""
        return self._pinned.tensor


def host_copy(dst: np.ndarray, src: np.ndarray, parts: int | None = None,
              pool: ThreadPoolExecutor | None = None) -> None:
    """``dst[...] = src`` for arrays of one shape and dtype (``casting="no"``); a large copy between
    C-contiguous arrays is split into contiguous slices copied on up to ``COPY_THREADS`` threads.

    parts / pool: the number of slices and the threads that copy them (scripts/transfer_probe.py times
    chosen splits); by default chosen from the size, on the process's copy threads."""
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError(f"host_copy: {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")
    parts = _copy_parts(src) if parts is None else parts
    if parts <= 1 or not (dst.flags.c_contiguous and src.flags.c_contiguous):
        np.copyto(dst, src, casting="no")
        return
    pool = pool or _copy_pool()
    flat_dst, flat_src = dst.reshape(-1), src.reshape(-1)  # views: both are C-contiguous
    bounds = np.linspace(0, flat_src.size, parts + 1).astype(np.int64)
    copies = [pool.submit(np.copyto, flat_dst[a:b], flat_src[a:b], casting="no")
              for a, b in zip(bounds[:-1], bounds[1:])]
    for copy in copies:
        copy.result()


def _copy_parts(src: np.ndarray) -> int:
    if src.nbytes < PARALLEL_COPY_BYTES:
        return 1
    return max(1, min(COPY_THREADS, os.cpu_count() or 1, src.nbytes // (PARALLEL_COPY_BYTES // 2)))


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _copy_pool() -> ThreadPoolExecutor:
    """The process's copy threads, started on the first large copy (idle ones just wait; joined at exit)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(min(COPY_THREADS, os.cpu_count() or 1), thread_name_prefix="segtrt-copy")
        return _pool


class _PageLocked:
    """One page-locked host buffer, grown to the largest request and reused; viewed as any dtype and shape."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def view(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if self._buffer is None or self._buffer.numel() < nbytes:
            self._buffer = None  # let the old one go first: never hold both
            started = time.perf_counter()
            self._buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
            log.debug("staging buffer: %.1f MB page-locked in %.1f ms", nbytes / 1e6,
                      (time.perf_counter() - started) * 1e3)
        return self._buffer[:nbytes].view(dtype).view(shape)

    @property
    def tensor(self) -> torch.Tensor | None:
        return self._buffer

    def release(self) -> None:
        self._buffer = None


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
