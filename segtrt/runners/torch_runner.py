"""The PyTorch runner: the reference backend, and the fallback-free default on any device."""

from __future__ import annotations

import contextlib

import torch

from segtrt.errors import BackendUnavailableError
from segtrt.runners.base import Runner


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode; fp16 is CUDA autocast (weights stay fp32, like nnU-Net).

    infer: (N, C, Z, Y, X) float32 -> (N, K, Z, Y, X) float32 (fp32) or float16 (fp16).
    """

    name = "torch"

    def __init__(self, network: torch.nn.Module, device: torch.device | str, precision: str = "fp32") -> None:
        super().__init__(device)
        if precision not in ("fp32", "fp16"):
            raise BackendUnavailableError(f"precision must be fp32 or fp16, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise BackendUnavailableError(
                f"torch fp16 runs on CUDA devices, got --device {self.device}; use --precision fp32 on the CPU"
            )
        self.network = network
        self.precision = precision

    def activate_impl(self) -> None:
        self.network.to(self.device).eval()

    def infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        autocast = (
            torch.autocast(self.device.type, dtype=torch.float16)
            if self.precision == "fp16"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            return self.network(batch)

    def describe(self) -> dict:
        return {**super().describe(), "precision": self.precision}
