"""Settings dataclasses: every default, and every environment read, lives here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "fp16")
BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")
#: --compile values -> torch.compile / inductor modes (None = eager).
COMPILE_MODES = {"off": None, "default": "default", "max-autotune": "max-autotune-no-cudagraphs",
                 "aot": "default", "aot-max-autotune": "max-autotune-no-cudagraphs"}
#: --compile values that load (or compile once) an AOTInductor package from segtrt's cache.
AHEAD_OF_TIME = ("aot", "aot-max-autotune")
#: --channels-last values -> TorchRunner(channels_last=...) (None = on when compiling on CUDA).
CHANNELS_LAST = {"auto": None, "on": True, "off": False}

#: Folder of the embedded default model (``sample_data/model`` in a source checkout).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "sample_data" / "model"


def cache_dir() -> Path:
    """Root of segtrt's on-disk caches (ONNX exports, engines); ``SEGTRT_CACHE_DIR`` overrides it."""
    env = os.environ.get("SEGTRT_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segtrt"


@dataclass(frozen=True)
class PredictSettings:
    """How one prediction runs. Shapes and spacings elsewhere are in array order (z, y, x).

    step_size: window step as a fraction of the patch size (nnU-Net's ``tile_step_size``).
    mirror: test-time mirroring over the model's allowed axes.
    batch_size: patches per forward pass (mirror flips are batched on top when they fit).
    precision: network precision; ``fp16`` is autocast (torch) or an fp16 graph (ONNX/TensorRT).
    accumulate_dtype: dtype of the logit/weight accumulators on the device.
    compile: torch backend only: ``off``, ``default`` or ``max-autotune`` (torch.compile, kernels cached
        on disk; the first run on a machine compiles).
    cuda_graph: torch backend only: replay the network from CUDA graphs (one capture per batch shape).
    stream: ``auto``, ``on`` or ``off``: z-streamed aggregation, a patch-tall slab of accumulators on
        the device and the finished logits on the host as float16 (segtrt.streaming); ``auto`` streams
        on CUDA when whole-volume accumulators would exceed 4 GiB.
    overlap_io: in a batch, read the next case and write the previous one in two background threads
        while the current case is on the device (segtrt.pipeline; at most one case read ahead, one
        write in flight); ``False`` does read -> predict -> write strictly in sequence.
    channels_last: torch backend only: ``auto`` (weights and batches in channels_last_3d when compiling on
        CUDA, where it removes cuDNN's layout transposes), ``on`` or ``off``.
    """

    device: str = "auto"
    step_size: float = 0.5
    mirror: bool = True
    batch_size: int = 4
    precision: str = "fp32"
    accumulate_dtype: str = "float32"
    save_probabilities: bool = False
    backend: str = "torch"
    folds: tuple[int | str, ...] | None = None
    configuration: str | None = None
    checkpoint_name: str = "checkpoint_final.pth"
    trust_checkpoint: bool = False
    compile: str = "off"
    cuda_graph: bool = False
    stream: str = "auto"
    overlap_io: bool = True
    channels_last: str = "auto"
