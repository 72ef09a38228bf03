"""The torch float32 reference: a network run in eval mode without autocast or TF32
(``torch_reference``), and the context manager that turns TF32 off (``exact_float32``)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from segtrt.verify.logits import LogitFn


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Disables TF32 in cuDNN convolutions and CUDA matmuls for the duration (the fp32 reference)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cudnn = torch.backends.cudnn
        with cudnn.flags(
            enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def torch_reference(network: torch.nn.Module) -> LogitFn:
    """The float32 reference: ``network`` in eval mode, no autocast, no TF32, on its own device.

    The returned callable takes (N, C, Z, Y, X) float32 patches on any device and returns the
    logits on the network's device.
    """
    device = next(network.parameters()).device

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), exact_float32():
            return network.eval()(batch.to(device=device, dtype=torch.float32))

    return run
