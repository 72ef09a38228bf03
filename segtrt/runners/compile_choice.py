"""``--compile auto`` (the default): which torch path a run takes, decided from segtrt's cache, with the reason.

On a CUDA GPU, ``auto`` loads the ahead-of-time packages (``--compile aot``) when every fold's package for
this run's batch shape, precision and layout is already in the cache — a warm start of under a second
(H200, 2026-12-04: 0.66 s from model load to the first batch of logits, none of torch's compiler imported)
and the fastest measured network path. Otherwise the run is eager (``--compile off``) and the reason names
the command that makes the packages once (``segtrt build MODEL_DIR``); ``auto`` never starts a compile,
which would add about 90 s per fold to the first run on a machine. On the CPU ``auto`` is eager.

The choice is logged and goes into the run report (``backend.compile``); nothing here loads a package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from segtrt.config import CHANNELS_LAST, HALF_WEIGHTS, PredictSettings, cache_dir
from segtrt.runners import compiled_cache

AUTO = "auto"
#: the inductor mode of the packages ``auto`` looks for (``segtrt build``'s default)
MODE = "default"


@dataclass(frozen=True)
class CompileChoice:
    """requested: the ``--compile`` value given; chosen: the one the runners use; reason: why, in one line;
    digests: when ``aot`` was chosen, each fold's weights digest, so that loading does not hash them again."""

    requested: str
    chosen: str
    reason: str
    digests: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {"requested": self.requested, "chosen": self.chosen, "reason": self.reason}


def choose(networks: Sequence[torch.nn.Module], folds: Sequence, input_shape: Sequence[int],
           settings: PredictSettings, device: torch.device) -> CompileChoice:
    """The ``--compile`` value for the torch runners of ``networks`` (one per fold, as loaded).

    input_shape: the runner's static batch shape (batch size, channels, *patch size).
    """
    requested = settings.compile
    if requested != AUTO:
        return CompileChoice(requested, requested, f"requested --compile {requested}")
    if device.type != "cuda":
        return CompileChoice(requested, "off", f"auto on {device}: eager (compiled packages are made for CUDA GPUs)")
    if settings.cuda_graph:
        return CompileChoice(requested, "off", "auto with --cuda-graph: the eager network in CUDA graphs (packages "
                                               "are not replayed from CUDA graphs)")
    if settings.freeze == "on" or settings.precompile == "on":
        return CompileChoice(requested, "off", "auto with --freeze on / --precompile on: those are torch.compile "
                                               "options; pass --compile default")
    channels_last = CHANNELS_LAST[settings.channels_last]
    half = HALF_WEIGHTS[settings.half_weights]
    layout = True if channels_last is None else channels_last  # the runner's auto for a compiled CUDA path
    half_weights = settings.precision == "fp16" if half is None else half
    if half_weights and settings.precision != "fp16":
        return CompileChoice(requested, "off", "auto with --half-weights on needs --precision fp16")
    shape = tuple(int(s) for s in input_shape)
    found = [compiled_cache.find(network, shape, settings.precision, layout, MODE, device=device,
                                 half_weights=half_weights) for network in networks]
    missing = [str(fold) for fold, (path, _) in zip(folds, found) if path is None]
    what = (f"batch {shape[0]}, patch {'x'.join(map(str, shape[2:]))}, {settings.precision}"
            f"{' (fp16 weights)' if half_weights else ''}, {'channels-last' if layout else 'NCDHW'}, "
            f"{torch.cuda.get_device_name(device)}")
    if not missing:
        return CompileChoice(requested, "aot", f"auto: compiled packages for every fold ({what}) are in "
                                               f"{cache_dir() / 'compiled'}", tuple(digest for _, digest in found))
    hint = (f"segtrt build MODEL_DIR --compile aot --precision {settings.precision} --batch-size {shape[0]}"
            + ("" if settings.channels_last == "auto" else f" --channels-last {settings.channels_last}")
            + ("" if settings.half_weights == "auto" else f" --half-weights {settings.half_weights}"))
    return CompileChoice(requested, "off", f"auto: no compiled package for fold {', '.join(missing)} ({what}) in "
                                           f"{cache_dir() / 'compiled'}, so eager; `{hint}` compiles them once "
                                           "(about 90 s a fold on an H200) and later runs load them in about a second")

