"""The PyTorch runner: the reference backend, and the fallback-free default on any device.

Four ways to execute the same ``nn.Module`` (all give the eager network's answer up to kernel
choice; scripts/bench_network.py measures them side by side):

* eager (default);
* ``compile_mode``: ``torch.compile`` with static shapes (``"default"`` or
  ``"max-autotune-no-cudagraphs"``). Inductor keeps its compiled kernels and autotuning results on
  disk, under ``<segtrt cache>/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set, so only the
  first run on a machine pays for compilation (later processes still trace the network again);
* ``ahead_of_time`` (with a ``compile_mode``): an AOTInductor package per (weights, batch shape,
  precision, layout, mode, GPU, torch version) in segtrt's cache (segtrt.runners.compiled_cache),
  compiled once and loaded in about a second by any later process;
* ``cuda_graph``: each input shape is captured once into a CUDA graph and replayed; with a compiled
  network, the graph captures the compiled kernels after the first (compiling) call.

``channels_last``: weights and each batch in ``torch.channels_last_3d`` (NDHWC in memory), the layout
cuDNN's fast 3D fp16 convolutions use; without it cuDNN transposes around every convolution (35% of
the compiled network's time on an H200). It only pays when compiled (eager instance norms are slower
in that layout), so ``None`` (auto) means on for the compiled paths on CUDA, off otherwise. Batches
are copied into the layout once per call on the device; logits come back contiguous (N, K, Z, Y, X).

``freeze``: inductor's freezing for the ``torch.compile`` path: the weights become constants of the compiled
graph, so their fp16 casts are folded and the convolution weights are laid out once instead of in every
call (H200, nnU-Net's CT U-Net, 128^3, batch 4, fp16 channels-last: 5.98 -> 4.06 ms/patch, same error
against eager fp32). Inductor's disk cache then keys the compiled graph on the weights' values too. ``None``
(auto) means on for ``torch.compile`` on CUDA without ``half_weights``, off otherwise (the ahead-of-time
package is unaffected).

``half_weights``: an fp16 copy of the network (weights cast once) runs without autocast, batches cast to
fp16 with their layout copy. Autocast instead casts every weight in every call; freezing folds those
casts too, but a frozen start is slower: H200, same network, a second process from model load to its
first logits 11.0 s with the fp16 copy vs 18.4 s frozen (4.18 vs 4.12 ms/patch; 3.93 vs 3.96 as a CUDA
graph; the same 1.8e-3 error against eager fp32). Convolutions see the same fp16 operands either way;
inductor keeps the instance norms' reductions in fp32. ``None`` (auto) means on for both compiled paths
in fp16 on CUDA: a package of the fp16 copy takes float16 batches and runs without autocast (H200, same
network: 3.98 ms/patch against 5.96 for the autocast package, error against eager fp32 1.8e-3 for both).

``precompile``: for the ``torch.compile`` path, save what torch.compile made in segtrt's cache and load it in
later processes instead of tracing the network again (segtrt.runners.precompiled; H200, same network, a second
process's first call 2.5 s, 2.1 s of it loading, vs 4.4-6.6 s from inductor's cache). ``None`` (auto) means on exactly when
``torch.compile``-ing on CUDA without frozen weights, with a torch that can save compiled modules. If it
fails, the runner says why (a warning, and ``compiled["precompiled"]`` in the report) and uses
torch.compile with inductor's disk cache instead. Auto is decided in ``activate()``: finding out imports
``torch._dynamo``, which ``segtrt predict`` imports in the background meanwhile (segtrt.runners.import_prefetch).

The compiled and graph paths have a static batch (``fixed_batch_size``): the predictor pads the last
call of a case, so nothing recompiles or recaptures mid-case.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time

import torch

from segtrt.errors import BackendUnavailableError
from segtrt.runners import compile_start, compiled_cache, import_prefetch, precompiled
from segtrt.runners.base import Runner

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode; fp16 is CUDA autocast (weights stay fp32, like nnU-Net).

    infer: (N, C, Z, Y, X) float32 -> (N, K, Z, Y, X) float32 (fp32) or float16 (fp16).
    batch_size: the static batch of the compiled / CUDA-graph paths (required by them).
    cudnn_benchmark: let cuDNN time its convolution algorithms per shape on the first call (CUDA); off by
        default: on an H100 it changed nothing for nnU-Net's CT U-Net (9.70 vs 9.74 ms per 128^3 patch).
    channels_last: True / False, or None = on exactly when compiling on CUDA (see the module docstring).
    ahead_of_time: with ``compile_mode``: load (or compile once) an AOTInductor package from segtrt's cache.
    freeze: True / False, or None = on exactly when ``torch.compile``-ing on CUDA without half_weights
        (see the module docstring).
    half_weights: True / False, or None = on exactly when compiling (either path) in fp16 on CUDA.
    precompile: True / False, or None = on exactly when ``torch.compile``-ing on CUDA without frozen weights
        and this torch can save compiled modules (see the module docstring).
    network_digest: for ``ahead_of_time``, the package key's weights digest when already computed
        (``compiled_cache.find``, via ``--compile auto``), so that loading does not hash the weights again.
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
        channels_last: bool | None = None,
        ahead_of_time: bool = False,
        freeze: bool | None = None,
        half_weights: bool | None = None,
        precompile: bool | None = None,
        network_digest: str | None = None,
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
        if ahead_of_time and compile_mode is None:
            raise BackendUnavailableError("ahead-of-time compilation needs a compile mode (default or max-autotune)")
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
        if channels_last is None:
            channels_last = compile_mode is not None and self.device.type == "cuda"
        self.channels_last = channels_last
        self.ahead_of_time = ahead_of_time
        self._network_digest = network_digest
        if freeze and (compile_mode is None or ahead_of_time):
            raise BackendUnavailableError("--freeze on applies to --compile default / max-autotune (torch.compile)")
        if half_weights and precision != "fp16":
            raise BackendUnavailableError(f"--half-weights on applies to --precision fp16, got --precision {precision}")
        compiling = compile_mode is not None and not ahead_of_time and self.device.type == "cuda"
        if half_weights is None:  # both compiled paths (torch.compile and packages) on CUDA in fp16
            half_weights = compile_mode is not None and self.device.type == "cuda" and precision == "fp16"
        if freeze is None:
            freeze = compiling and not half_weights
        self.freeze = freeze
        self.half_weights = half_weights
        if precompile and (compile_mode is None or ahead_of_time or freeze):
            given = ("--compile off" if compile_mode is None else "--compile aot" if ahead_of_time
                     else "--freeze on")
            raise BackendUnavailableError(f"--precompile on applies to --compile default / max-autotune without "
                                          f"--freeze on; got {given}")
        if precompile:
            reason = precompiled.unavailable_reason()
            if reason:
                raise BackendUnavailableError(f"--precompile on: {reason}; use --precompile off")
        if precompile is None and not (compiling and not freeze):
            precompile = False
        # None: decided in activate(), whether this torch can precompile (that check imports torch._dynamo,
        # which segtrt.runners.import_prefetch may still be importing while the first images are read)
        self._precompile = precompile
        self._half_network: torch.nn.Module | None = None
        self.compiled: compiled_cache.CompiledNetwork | None = None
        self.compiled_info: dict | None = None  # kept for the report after deactivate()
        self.activate_seconds: dict[str, float] = {}

    def activate_impl(self) -> None:
        start = time.perf_counter()
        with torch.inference_mode(False):  # weights made under inference_mode could not be exported later
            self.network.to(self.device).eval()
            if self.channels_last:
                self.network.to(memory_format=torch.channels_last_3d)  # 5-D weights only; undone in deactivate()
            if self.half_weights:  # a copy: the fp32 weights stay as they are (the reference, exports)
                self._half_network = copy.deepcopy(self.network).half().eval()
        if self.device.type == "cuda":
            # the process-wide flag is restored in deactivate()
            self._cudnn_benchmark = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.activate_seconds = {"to_device": round(time.perf_counter() - start, 3)}
        if self.compile_mode is not None and not self.ahead_of_time:
            start = time.perf_counter()
            import_prefetch.wait()
            self.activate_seconds["import_wait"] = round(time.perf_counter() - start, 3)
            start = time.perf_counter()
            self.precompile  # noqa: B018 - decides auto now, after the background imports
            cache = compiled_cache.inductor_cache_dir()
            log.info("torch.compile(mode=%s, %s%s%s), kernel cache %s", self.compile_mode, self._layout(),
                     ", fp16 weights" if self.half_weights else "", ", frozen weights" if self.freeze else "", cache)
            self._forward = torch.compile(self._inference_network(), mode=self.compile_mode, dynamic=False,
                                          fullgraph=True)
            self.activate_seconds["compile_setup"] = round(time.perf_counter() - start, 3)
        else:
            self._forward = self._inference_network()

    @property
    def precompile(self) -> bool:
        """Whether the torch.compile path saves / loads precompiled modules (auto is decided on first use)."""
        if self._precompile is None:
            self._precompile = precompiled.unavailable_reason() is None
        return self._precompile

    @property
    def costly_first_call(self) -> bool:
        """On CUDA, the compiled paths' first call compiles or loads kernels and the graph path captures;
        on the CPU an extra call would cost a whole batch's compute, so none is made ahead."""
        return self.device.type == "cuda" and (self.compile_mode is not None or self.cuda_graph)

    def _inference_network(self) -> torch.nn.Module:
        return self._half_network if self._half_network is not None else self.network

    def deactivate_impl(self) -> None:
        self._graphs.clear()
        self._forward = self.network
        self._half_network = None
        self.compiled = None
        if self.channels_last:
            with torch.inference_mode(False):
                self.network.to(memory_format=torch.contiguous_format)
        if self._cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = self._cudnn_benchmark
            self._cudnn_benchmark = None

    def prepare(self, shape: tuple[int, ...], rebuild: bool = False) -> compiled_cache.CompiledNetwork:
        """Load (or compile once) the ahead-of-time package for batches of ``shape`` (N, C, Z, Y, X)."""
        if not self.ahead_of_time:
            raise RuntimeError("prepare() is for the ahead-of-time path")
        if rebuild or self.compiled is None or self.compiled_info["input_shape"] != list(shape):
            self.compiled = compiled_cache.get_or_compile(self._inference_network(), shape, self.precision,
                                                          self.channels_last, self.compile_mode, device=self.device,
                                                          rebuild=rebuild, half_weights=self.half_weights,
                                                          network_digest=self._network_digest)
            self.compiled_info = {**self.compiled.describe(), "input_shape": list(shape)}
            log.info("ahead-of-time network %s (%s start, %.1f s)", self.compiled.path.name,
                     "warm" if self.compiled.warm else "cold", self.compiled.seconds)
        return self.compiled

    def _autocast(self):
        if self.precision == "fp16" and not self.half_weights:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        if self.first_call_seconds is None and self.compile_mode and not self.ahead_of_time:
            return self._first_compiled_call(batch)
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

    def _first_compiled_call(self, batch: torch.Tensor) -> torch.Tensor:
        """The call that compiles (or loads from inductor's disk cache): in-process when segtrt compiled
        this network before (segtrt.runners.compile_start), else with inductor's pool of compile workers.
        With ``precompile``, the saved compiled module is loaded (or made and saved) instead."""
        import torch._inductor.config as inductor_config

        start = time.perf_counter()
        marker, fields = compile_start.marker_path(self.network, tuple(batch.shape), self.precision,
                                                   self.channels_last, self.compile_mode, self.freeze, self.device,
                                                   half_weights=self.half_weights)
        fallback = None
        if self.precompile:
            compiled_forward = self._forward  # activate()'s torch.compile, kept for the fallback
            try:
                return self._first_precompiled_call(batch, fields, start)
            except Exception as exc:  # noqa: BLE001 - explicit fallback: logged and in the report
                fallback = f"failed, torch.compile used instead: {precompiled.one_line(exc)}"
                log.warning("the precompiled network could not be made or loaded (%s); using torch.compile with "
                            "inductor's disk cache instead", precompiled.one_line(exc))
                self._forward = compiled_forward
        expect_warm = marker.is_file()
        before = _inductor_cache_counts()
        # set while dynamo traces and inductor compiles (both happen in this call): passed as torch.compile
        # options instead, freezing reached inductor but not the tracing, and the weights were not frozen
        # (H200: 6.2 ms/patch instead of 4.1)
        patch = {"freezing": True} if self.freeze else {}
        if expect_warm:
            patch["compile_threads"] = 1
        with inductor_config.patch(patch):
            out = self._run(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.first_call_seconds = time.perf_counter() - start
        self.compiled_info = {**_cache_start(before, _inductor_cache_counts()),
                              "compile_workers": "in-process" if expect_warm else "inductor pool"}
        if fallback:
            self.compiled_info["precompiled"] = fallback
        if self.compiled_info["start"] == "cold":
            if expect_warm:
                log.warning("segtrt compiled this network before, but inductor's cache (%s) no longer has it; it "
                            "was compiled again in this process (slower)", compiled_cache.inductor_cache_dir())
            compile_start.record_compiled(marker, fields, self.first_call_seconds)
        log.info("torch runner first call (%s, %s start) took %.1f s", self._path(), self.compiled_info["start"],
                 self.first_call_seconds)
        return out

    def _first_precompiled_call(self, batch: torch.Tensor, fields: dict, start: float) -> torch.Tensor:
        network, prepared = self._inference_network(), self._prepare(batch)
        fields = {key: value for key, value in fields.items() if key != "purpose"}

        def load(example: torch.Tensor) -> precompiled.Loaded:
            with torch.inference_mode():  # as every later call: batches are inference tensors
                return precompiled.load_or_compile(network, example, fields, self.compile_mode, self._autocast)

        forward = precompiled.PrecompiledForward(load)
        loaded = forward.get(prepared)
        self._forward = forward
        with torch.inference_mode(), self._autocast():
            out = forward(prepared).contiguous()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.first_call_seconds = time.perf_counter() - start
        self.compiled_info = {"start": "warm" if loaded.how == "loaded" else "cold", **loaded.describe()}
        log.info("torch runner first call (%s, precompiled, %s start) took %.1f s", self._path(),
                 self.compiled_info["start"], self.first_call_seconds)
        return out

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        if self.half_weights:  # one copy for the cast and the layout (to_layout then only fixes strides)
            layout = torch.channels_last_3d if self.channels_last else torch.contiguous_format
            batch = batch.to(dtype=torch.float16, memory_format=layout)
        return compiled_cache.to_layout(batch, self.channels_last)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        batch = self._prepare(batch)
        if self.ahead_of_time:
            forward, autocast = self.prepare(tuple(batch.shape)).module, contextlib.nullcontext()  # autocast inside
        else:
            forward, autocast = self._forward, self._autocast()
        with torch.inference_mode(), autocast:
            return forward(batch).contiguous()  # aggregation adds (K, *patch) slices of NCDHW accumulators

    def _path(self) -> str:
        graph = "+cuda-graph" if self.cuda_graph else ""
        if self.compile_mode:
            return f"{'aot' if self.ahead_of_time else 'compile'}:{self.compile_mode}{graph}"
        return "cuda-graph" if self.cuda_graph else "eager"

    def _layout(self) -> str:
        return "channels_last_3d" if self.channels_last else "ncdhw"

    def describe(self) -> dict:
        info = {**super().describe(), "precision": self.precision, "path": self._path(), "layout": self._layout()}
        if self.compile_mode and not self.ahead_of_time:
            info["frozen_weights"] = self.freeze
            info["precompile"] = "auto" if self._precompile is None else self._precompile
            prefetch = import_prefetch.summary()
            if prefetch is not None:
                info["import_prefetch"] = prefetch
        if self.precision == "fp16":
            info["weights"] = "fp16 copy" if self.half_weights else "fp32 (autocast)"
        if self.activate_seconds:
            info["activate_seconds"] = dict(self.activate_seconds)
        if self.first_call_seconds is not None:
            info["first_call_seconds"] = round(self.first_call_seconds, 3)
        if self.compiled_info is not None:
            info["compiled"] = self.compiled_info
        return info


def _inductor_cache_counts() -> dict[str, int]:
    """torch.compile's cache hits and misses so far in this process (inductor's FX graph cache, AOTAutograd's)."""
    from torch._dynamo.utils import counters

    return {"fxgraph_hits": counters["inductor"]["fxgraph_cache_hit"],
            "fxgraph_misses": counters["inductor"]["fxgraph_cache_miss"],
            "autograd_hits": counters["aot_autograd"]["autograd_cache_hit"]}


def _cache_start(before: dict[str, int], after: dict[str, int]) -> dict:
    """What a first compiled call found in inductor's disk cache: ``warm`` (all hits) or ``cold``."""
    delta = {name: after[name] - before[name] for name in after}
    hits = delta["fxgraph_hits"] + delta["autograd_hits"]
    delta["start"] = "warm" if hits > 0 and delta["fxgraph_misses"] == 0 else "cold"
    return delta


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
