"""Host -> device copies of whole volumes through a reusable page-locked staging buffer."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

log = logging.getLogger(__name__)


class Uploader:
    """Copies host arrays to ``device``; the arrays themselves are never modified.

    On the CPU the tensor shares the array's memory (callers copy before writing). To a CUDA device
    the bytes are copied into one page-locked staging buffer kept for the uploader's lifetime (grown
    to the largest volume seen) and sent asynchronously on the current stream. Page-locking memory is
    the slow part of a pinned copy (measured on an H200: 216 ms to pin a fresh 315 MB block, 8 ms to
    copy into an existing one, 6 ms host -> device), so it is paid once per run, not once per case.
    Before the buffer is reused, the previous copy out of it is waited for.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffer: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        """``array`` as a tensor of the same dtype and shape on the device."""
        if self.device.type != "cuda":
            return torch.from_numpy(np.ascontiguousarray(array))
        start = time.perf_counter()
        staging = self._staging(array.shape, _torch_dtype(array.dtype))
        # numpy copies straight into the page-locked buffer (no torch.from_numpy of the source)
        np.copyto(staging.numpy(), array, casting="no")
        copied = time.perf_counter()
        tensor = staging.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(self.device))
        log.debug("upload %s %s: %.1f ms into the staging buffer", array.shape, array.dtype, (copied - start) * 1e3)
        return tensor

    def release(self) -> None:
        """Give the staging buffer back (after its last copy has finished)."""
        if self._copied is not None:
            self._copied.synchronize()
        self._buffer = self._copied = None

    def _staging(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if self._copied is not None:
            self._copied.synchronize()  # the last upload has left the buffer
        if self._buffer is None or self._buffer.numel() < nbytes:
            self._buffer = None
            started = time.perf_counter()
            self._buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            log.debug("staging buffer: %.1f MB page-locked in %.1f ms", nbytes / 1e6,
                      (time.perf_counter() - started) * 1e3)
        return self._buffer[:nbytes].view(dtype).view(shape)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
