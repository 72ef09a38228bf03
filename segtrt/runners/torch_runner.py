"""The PyTorch runner: the reference backend, and the fallback-free default on any device.

Three ways to execute the same ``nn.Module`` (all give the eager network's answer up to kernel
choice; scripts/bench_network.py measures them side by side):

* eager (default);
* ``compile_mode``: ``torch.compile`` with static shapes (``"default"`` or
  ``"max-autotune-no-cudagraphs"``). Inductor keeps its compiled kernels and autotuning results on
  disk, under ``<segtrt cache>/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set, so only the
  first run on a machine pays for compilation;
* ``cuda_graph``: each input shape is captured once into a CUDA graph and replayed.

The compiled and graph paths have a static batch (``fixed_batch_size``): the predictor pads the last
call of a case, so nothing recompiles or recaptures mid-case.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import torch

from segtrt.config import cache_dir
from segtrt.errors import BackendUnavailableError
from segtrt.runners.base import Runner

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode; fp16 is CUDA autocast (weights stay fp32, like nnU-Net).

    infer: (N, C, Z, Y, X) float32 -> (N, K, Z, Y, X) float32 (fp32) or float16 (fp16).
    batch_size: the static batch of the compiled / CUDA-graph paths (required by them).
    cudnn_benchmark: let cuDNN time its convolution algorithms per shape on the first call (CUDA); off by
        default: on an H100 it changed nothing for nnU-Net's CT U-Net (9.70 vs 9.74 ms per 128^3 patch).
    """

    name = "torch"

    def __init__(
        self,
        network: torch.nn.Module,
        device: torch.device | str,
        precision: str = "fp32",
        *,
        compile_mode: str | None = None,
        cuda_graph: bool = False,
        batch_size: int | None = None,
        cudnn_benchmark: bool = False,
    ) -> None:
        super().__init__(device)
        if precision not in ("fp32", "fp16"):
            raise BackendUnavailableError(f"precision must be fp32 or fp16, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise BackendUnavailableError(
                f"torch fp16 runs on CUDA devices, this run is on {self.device}; use --precision fp32 on the CPU"
            )
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise BackendUnavailableError(f"--compile must be one of off, {', '.join(COMPILE_MODES)}; got {compile_mode!r}")
        if cuda_graph and self.device.type != "cuda":
            raise BackendUnavailableError(f"--cuda-graph needs a CUDA device, this run is on {self.device}")
        if cuda_graph and compile_mode is not None:
            raise BackendUnavailableError("--cuda-graph and --compile are exclusive; pick one")
        self.network = network
        self.precision = precision
        self.compile_mode = compile_mode
        self.cuda_graph = cuda_graph
        if compile_mode is not None or cuda_graph:
            self.fixed_batch_size = batch_size
        self._forward = network
        self._graphs: dict[tuple, _CapturedGraph] = {}
        self.cudnn_benchmark = cudnn_benchmark
        self._cudnn_benchmark: bool | None = None
        self.first_call_seconds: float | None = None

    def activate_impl(self) -> None:
        self.network.to(self.device).eval()
        if self.device.type == "cuda":
            # the process-wide flag is restored in deactivate()
            self._cudnn_benchmark = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.compile_mode is not None:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
            log.info("torch.compile(mode=%s), kernel cache %s", self.compile_mode, os.environ["TORCHINDUCTOR_CACHE_DIR"])
            self._forward = torch.compile(self.network, mode=self.compile_mode, dynamic=False, fullgraph=True)

    def deactivate_impl(self) -> None:
        self._graphs.clear()
        self._forward = self.network
        if self._cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = self._cudnn_benchmark
            self._cudnn_benchmark = None

    def _autocast(self):
        if self.precision == "fp16":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        first = self.first_call_seconds is None
        start = time.perf_counter() if first else 0.0
        if self.cuda_graph:
            key = (tuple(batch.shape), batch.dtype)
            if key not in self._graphs:
                self._graphs[key] = _CapturedGraph(self._run, batch)
            out = self._graphs[key].replay(batch)
        else:
            out = self._run(batch)
        if first:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.first_call_seconds = time.perf_counter() - start
            log.info("torch runner first call (%s) took %.1f s", self._path(), self.first_call_seconds)
        return out

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            return self._forward(batch)

    def _path(self) -> str:
        if self.compile_mode:
            return f"compile:{self.compile_mode}"
        return "cuda-graph" if self.cuda_graph else "eager"

    def describe(self) -> dict:
        info = {**super().describe(), "precision": self.precision, "path": self._path()}
        if self.first_call_seconds is not None:
            info["first_call_seconds"] = round(self.first_call_seconds, 3)
        return info


class _CapturedGraph:
    """One CUDA graph of ``run`` for a fixed input shape: copy in, replay, return the static output."""

    def __init__(self, run, example: torch.Tensor) -> None:
        self.input = example.clone()
        stream = torch.cuda.Stream(device=example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (cuDNN autotuning, workspace allocation)
                run(self.input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = run(self.input)

    def replay(self, batch: torch.Tensor) -> torch.Tensor:
        self.input.copy_(batch)
        self.graph.replay()
        return self.output
