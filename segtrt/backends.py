"""Turning a loaded model and the user's backend choice into runners (one per fold).

Every choice is explicit: a backend that cannot run raises BackendUnavailableError with the
reason; nothing falls back silently. The returned ``choice`` dict goes into the run report.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from segtrt.config import (AHEAD_OF_TIME, BACKENDS, CHANNELS_LAST, COMPILE_MODES, FREEZE, HALF_WEIGHTS, PRECOMPILE,
                           PredictSettings, default_of)
from segtrt.errors import BackendUnavailableError
from segtrt.runners import compile_choice
from segtrt.runners.base import Runner
from segtrt.runners.torch_runner import TorchRunner

log = logging.getLogger(__name__)


def create_runners(model, settings: PredictSettings, device: torch.device) -> tuple[list[Runner], dict]:
    """Runners for every fold of ``model`` (a ``segtrt.nnunet.LoadedModel``) and the reasons for them."""
    if settings.backend not in BACKENDS:
        raise BackendUnavailableError(f"--backend must be one of {', '.join(BACKENDS)}, got {settings.backend!r}")
    default = settings.backend == default_of("backend")
    backend = settings.backend
    reason = f"{backend} (the default backend)" if default else f"requested --backend {backend}"
    if backend == "auto":
        backend, reason = choose_backend(device)
        log.info("backend auto -> %s (%s)", backend, reason)
    if backend != "torch" and (settings.compile not in ("auto", "off") or settings.cuda_graph
                               or settings.channels_last != "auto" or settings.freeze != "auto"
                               or settings.half_weights != "auto" or settings.precompile != "auto"):
        raise BackendUnavailableError(f"--compile, --cuda-graph, --channels-last, --freeze, --half-weights and "
                                      f"--precompile apply to the torch backend, not {backend}")
    choice = None
    if backend == "torch":
        folder = model.folder
        shape = (settings.batch_size, folder.num_input_channels, *folder.configuration["patch_size"])
        choice = compile_choice.choose(model.networks, folder.folds, shape, settings, device)
        if choice.requested != choice.chosen:
            log.info("--compile %s -> %s (%s)", choice.requested, choice.chosen, choice.reason)
        chosen = replace(settings, compile=choice.chosen)
        digests = choice.digests or (None,) * len(model.networks)
        runners = [torch_runner(net, chosen, device, digest) for net, digest in zip(model.networks, digests)]
    elif backend == "onnxruntime":
        runners = _onnxruntime_runners(model, settings, device)
    else:
        runners = _tensorrt_runners(model, settings, device)
    entry = {"backend": backend, "reason": reason, "runner": runners[0].describe()}
    if choice is not None:
        entry["compile"] = choice.describe()
    return runners, entry


def compile_used(settings: PredictSettings, backend: dict) -> PredictSettings:
    """``settings`` with the ``--compile`` value its runners were made with (``auto`` resolved; see
    :func:`create_runners`'s ``compile`` entry)."""
    chosen = backend.get("compile", {}).get("chosen")
    return settings if chosen in (None, settings.compile) else replace(settings, compile=chosen)


def torch_runner(network: torch.nn.Module, settings: PredictSettings, device: torch.device,
                 network_digest: str | None = None) -> TorchRunner:
    """The torch runner for one fold's network as ``settings`` (compile, CUDA graph, layout) ask; ``--compile
    auto`` must have been resolved (segtrt.runners.compile_choice, as :func:`create_runners` does, passing
    the package's weights digest it computed)."""
    if settings.compile == compile_choice.AUTO:
        raise ValueError("torch_runner needs --compile auto resolved first (segtrt.runners.compile_choice)")
    if settings.compile not in COMPILE_MODES:
        raise BackendUnavailableError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {settings.compile!r}")
    if settings.channels_last not in CHANNELS_LAST:
        raise BackendUnavailableError(
            f"--channels-last must be one of {', '.join(CHANNELS_LAST)}, got {settings.channels_last!r}")
    return TorchRunner(network, device, settings.precision, compile_mode=COMPILE_MODES[settings.compile],
                       cuda_graph=settings.cuda_graph, batch_size=settings.batch_size,
                       channels_last=CHANNELS_LAST[settings.channels_last],
                       ahead_of_time=settings.compile in AHEAD_OF_TIME, freeze=FREEZE[settings.freeze],
                       half_weights=HALF_WEIGHTS[settings.half_weights],
                       precompile=PRECOMPILE[settings.precompile], network_digest=network_digest)


def choose_backend(device: torch.device) -> tuple[str, str]:
    """``--backend auto``: TensorRT, then ONNX Runtime CUDA, then torch CUDA; the CPU must be explicit."""
    if device.type != "cuda":
        if device.type == "cpu":
            return "torch", "auto on the CPU: torch (TensorRT and ONNX Runtime CUDA need a GPU)"
        raise BackendUnavailableError("--backend auto needs a CUDA device; pass --device cpu to run on the CPU")
    problems = []
    try:
        from segtrt.engine.flavors import runtime_support

        ok, why = runtime_support(device)
        if ok:
            return "tensorrt", why
        problems.append(why)
    except ImportError as exc:
        problems.append(f"TensorRT support not importable ({exc})")
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "onnxruntime", "; ".join(problems + ["ONNX Runtime has the CUDA execution provider"])
        problems.append("ONNX Runtime has no CUDA execution provider")
    except ImportError:
        problems.append("onnxruntime is not installed")
    return "torch", "; ".join(problems + ["torch CUDA"])


def _onnxruntime_runners(model, settings: PredictSettings, device: torch.device) -> list[Runner]:
    from segtrt.onnx_cache import cached_exports
    from segtrt.runners.onnxruntime_runner import OnnxRuntimeRunner

    paths = cached_exports(model, settings)
    return [OnnxRuntimeRunner(path, device) for path in paths]


def _tensorrt_runners(model, settings: PredictSettings, device: torch.device) -> list[Runner]:
    if device.type != "cuda":
        raise BackendUnavailableError(f"--backend tensorrt needs a CUDA device; this run is on {device}")
    from segtrt.runners.tensorrt_runner import TensorRTRunner

    return [TensorRTRunner(plan, device) for plan in engine_for_model(model, settings, device)]


def engine_for_model(model: Any, settings: Any, device: torch.device) -> list[Path]:
    """One cached plan per fold of a loaded model, for ``--backend tensorrt`` (see segtrt.backends).

    The ONNX files come from ``segtrt.onnx_cache.cached_exports``; the profile spans 1 to
    ``settings.batch_size`` patches.
    """
    from segtrt.engine.build import BuildOptions
    from segtrt.engine.cache import current_target, get_or_build
    from segtrt.onnx_cache import cached_exports

    options = BuildOptions(min_batch=1, opt_batch=settings.batch_size, max_batch=settings.batch_size)
    target = current_target(device)
    return [get_or_build(path, options, target=target).plan_path for path in cached_exports(model, settings)]
