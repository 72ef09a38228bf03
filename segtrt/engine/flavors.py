"""Which TensorRT is installed: full TensorRT (10.x / 11.x, ``import tensorrt``) or TensorRT-RTX
(``import tensorrt_rtx``).

Both share one Python API family (``Builder``, ``OnnxParser``, ``Runtime``, ``execute_async_v3``).
The differences segtrt cares about, written down once here:

- Network creation: TensorRT >= 10.12 and TensorRT-RTX take ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
  (tensor types come from the ONNX graph; fp16 must be in the graph). TensorRT 11 is strongly typed only and
  accepts the flag. ``EXPLICIT_BATCH`` is the default since 10.0 and is never set.
- ``BuilderFlag.FP16`` is never used (removed in 11.x; meaningless under strong typing).
- Timing cache: real in full TensorRT; a deprecated no-op in TensorRT-RTX (since RTX 1.2).
- Runtime: TensorRT-RTX executes only on the compute capabilities listed in ``RTX_RUNTIME_CCS``; full
  TensorRT's list is not encoded here (its deserializer says so when a GPU is unsupported).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType

from segtrt.errors import BackendUnavailableError, EngineError

log = logging.getLogger(__name__)

FLAVORS = ("tensorrt", "tensorrt-rtx")
_MODULE_NAMES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_INSTALL_HINTS = {
    "tensorrt": "pip install 'segtrt[tensorrt]' (needs access to NVIDIA's package index)",
    "tensorrt-rtx": "pip install 'segtrt[rtx]'",
}

#: Compute capabilities the TensorRT-RTX 1.x runtime executes on, as its deserializer lists them
#: ("Supported compute capabilities: 8.0 8.6 8.9 12.0 12.1", seen on an H200, FACTS.md).
RTX_RUNTIME_CCS = ((8, 0), (8, 6), (8, 9), (12, 0), (12, 1))


@dataclass(frozen=True)
class Flavor:
    """One importable TensorRT: its segtrt name (``tensorrt`` / ``tensorrt-rtx``) and module."""

    name: str
    module: ModuleType

    @property
    def version(self) -> str:
        return str(self.module.__version__)

    @property
    def label(self) -> str:
        """Human name, e.g. ``TensorRT-RTX 1.7.1.116``."""
        return f"{'TensorRT-RTX' if self.name == 'tensorrt-rtx' else 'TensorRT'} {self.version}"

    @property
    def supports_timing_cache(self) -> bool:
        """False for TensorRT-RTX, where timing-cache calls are accepted and ignored."""
        return self.name == "tensorrt"

    def network_flags(self) -> int:
        """Creation flags for a strongly typed network (0 where the API has no such flag)."""
        flags = self.module.NetworkDefinitionCreationFlag
        if hasattr(flags, "STRONGLY_TYPED"):
            return 1 << int(flags.STRONGLY_TYPED)
        log.warning("%s has no STRONGLY_TYPED network flag; building a weakly typed network", self.label)
        return 0

    def runtime_supports(self, compute_capability: tuple[int, int]) -> bool | None:
        """Whether this runtime executes on a GPU of ``compute_capability``; None when not known."""
        if self.name == "tensorrt-rtx":
            return tuple(compute_capability) in RTX_RUNTIME_CCS
        return None

    def make_logger(self) -> "object":
        """A ``trt.ILogger`` that forwards to Python logging and keeps error messages (``.errors``)."""
        return _make_logger(self.module)


def _make_logger(trt: ModuleType) -> object:
    severity = trt.ILogger.Severity
    levels = {
        # errors are logged as warnings: every failure they explain is raised with them quoted
        severity.INTERNAL_ERROR: logging.WARNING,
        severity.ERROR: logging.WARNING,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,
    }

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, sev, msg: str) -> None:  # called by TensorRT, possibly from its threads
            level = levels.get(sev)
            if level is None:
                return
            if sev in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(msg)
            log.log(level, "[%s] %s", trt.__name__, msg)

    return CapturingLogger()


def import_flavor(name: str) -> Flavor:
    """Import one flavor by name; BackendUnavailableError (with the install command) when absent."""
    if name not in _MODULE_NAMES:
        raise EngineError(f"unknown TensorRT flavor {name!r}; expected one of {', '.join(FLAVORS)} or 'auto'")
    try:
        module = importlib.import_module(_MODULE_NAMES[name])
    except (ImportError, OSError) as exc:
        raise BackendUnavailableError(
            f"{name} is not importable here ({exc.__class__.__name__}: {exc}); install it with "
            f"{_INSTALL_HINTS[name]}"
        ) from exc
    return Flavor(name, module)


def load_flavor(name: str = "auto") -> Flavor:
    """The requested flavor; ``auto`` takes full TensorRT when importable, else TensorRT-RTX (logged)."""
    if name != "auto":
        return import_flavor(name)
    reasons = []
    for candidate in FLAVORS:
        try:
            flavor = import_flavor(candidate)
        except BackendUnavailableError as exc:
            reasons.append(str(exc))
            continue
        log.info("TensorRT flavor 'auto' resolved to %s", flavor.label)
        return flavor
    raise BackendUnavailableError("no TensorRT is installed: " + "; ".join(reasons))


@dataclass(frozen=True)
class FlavorStatus:
    """What ``segtrt info`` reports for one flavor."""

    name: str
    installed: bool
    version: str | None
    error: str | None

    def as_dict(self) -> dict:
        return {"name": self.name, "installed": self.installed, "version": self.version, "error": self.error}


def probe_flavors() -> list[FlavorStatus]:
    """Import each flavor and report its version or why it cannot be imported."""
    statuses = []
    for name in FLAVORS:
        try:
            flavor = import_flavor(name)
        except BackendUnavailableError as exc:
            statuses.append(FlavorStatus(name, False, None, str(exc)))
        else:
            statuses.append(FlavorStatus(name, True, flavor.version, None))
    return statuses


def runtime_support(device: "object") -> tuple[bool, str]:
    """Whether a TensorRT runtime here can execute on CUDA ``device`` (a ``torch.device``), and why.

    Never raises for a missing TensorRT: ``--backend auto`` uses the reason to pick another backend.
    """
    import torch

    try:
        flavor = load_flavor("auto")
    except BackendUnavailableError as exc:
        return False, str(exc)
    index = getattr(device, "index", None)
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    gpu = f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor})"
    supported = flavor.runtime_supports((major, minor))
    if supported is False:
        listed = " ".join(f"{a}.{b}" for a, b in RTX_RUNTIME_CCS)
        return False, f"{flavor.label} does not run on {gpu}; it runs on compute capabilities {listed}"
    if supported is None:
        return True, f"{flavor.label} is installed; its runtime checks {gpu} when the engine loads"
    return True, f"{flavor.label} runs on {gpu}"
