"""The runner lifecycle shared by every backend.

A runner turns a batch of normalized patches into logits on one device::

    with runner:                       # activate(): load weights / sessions / engines
        logits = runner.infer(batch)   # (N, C, *patch) float32 -> (N, K, *patch) float32

The sliding-window predictor only ever sees this interface, so tiling is tested on the CPU with a
plain callable and every backend plugs in unchanged.
"""

from __future__ import annotations

import abc
import logging

import torch

from segtrt.errors import SegtrtError

log = logging.getLogger(__name__)


class Runner(abc.ABC):
    """Base class: checks state and inputs once, then calls the backend's ``*_impl`` methods.

    Subclasses set ``name`` and ``device`` and implement ``activate_impl``, ``infer_impl`` and
    optionally ``deactivate_impl``. ``max_batch_size`` (None = unbounded) tells the predictor how
    many patches one call may take; ``fixed_batch_size`` (None = any) is set by backends whose
    graph has a static batch dimension.
    """

    name: str = "runner"
    max_batch_size: int | None = None
    fixed_batch_size: int | None = None

    def __init__(self, device: torch.device | str) -> None:
        self.device = _indexed(torch.device(device))
        self.is_active = False

    # lifecycle -------------------------------------------------------------------------------
    def activate(self) -> None:
        """Load the backend; if ``activate_impl`` fails part-way, ``deactivate_impl`` releases what it got."""
        if not self.is_active:
            try:
                self.activate_impl()
            except BaseException:
                self.deactivate_impl()
                raise
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # inference -------------------------------------------------------------------------------
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of patches.

        batch: (N, C, Z, Y, X) float32 on ``self.device``. Returns (N, K, Z, Y, X) float32 or
        float16 on ``self.device``. The returned tensor may be reused by the next call: consume
        it before calling again.
        """
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner used before activate()")
        if _indexed(batch.device) != self.device:
            raise RuntimeError(f"{self.name} runner on {self.device} got a batch on {batch.device}")
        if self.fixed_batch_size is not None and batch.shape[0] != self.fixed_batch_size:
            raise SegtrtError(
                f"the {self.name} graph has a static batch of {self.fixed_batch_size}, got {batch.shape[0]} "
                "patches; export with --dynamic-batch or predict with the matching --batch-size"
            )
        return self.infer_impl(batch)

    __call__ = infer

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, batch: torch.Tensor) -> torch.Tensor: ...

    def deactivate_impl(self) -> None:
        return None

    @property
    def costly_first_call(self) -> bool:
        """True when the first call compiles, loads compiled kernels or captures a graph (seconds, not
        milliseconds): the predictor then makes that call at activation, on a zero batch, while the first
        images are still being read (segtrt.predictor.Predictor.activate)."""
        return False

    def describe(self) -> dict:
        """What ran, for the run report."""
        return {"backend": self.name, "device": str(self.device)}


def _indexed(device: torch.device) -> torch.device:
    """'cuda' -> 'cuda:N' (the current device), so devices compare equal however they were named."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device
