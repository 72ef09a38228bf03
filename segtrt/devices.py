"""Choosing the torch device: explicit requests are honoured or refused, never silently replaced."""

from __future__ import annotations

import logging

import torch

from segtrt.errors import BackendUnavailableError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> tuple[torch.device, str]:
    """The device for ``name`` ('auto', 'cpu', 'cuda', 'cuda:N') and a one-line reason for the report.

    'auto' takes the first CUDA device when torch sees one, else the CPU (logged). An explicit CUDA
    device that is absent raises BackendUnavailableError.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0), "auto: CUDA device 0 is available"
        log.warning("no CUDA device visible to torch: running on the CPU (pass --device cpu to silence this)")
        return torch.device("cpu"), "auto: no CUDA device visible to torch, using the CPU"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise BackendUnavailableError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"--device {name} was requested but torch sees no CUDA device; use --device cpu"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise BackendUnavailableError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return torch.device("cuda", index), f"requested {name}"
    if device.type != "cpu":
        raise BackendUnavailableError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device, "requested cpu"
