"""Run a TensorRT or TensorRT-RTX plan on torch CUDA tensors (no pycuda).

One execution context per runner. torch allocates the input and output buffers on the runner's
device; the context only sees their ``data_ptr()`` and the runner keeps every bound tensor referenced
(``segtrt.runners.binding``). Each call runs on the runner's own CUDA stream, which first waits for the
caller's stream and which the caller's stream waits for afterwards. A dynamic-batch engine gets its
input shape set per call. With ``cuda_graph=True`` the enqueue is captured once per batch size (each
batch size keeps its own buffers, whose addresses the graph holds) and replayed afterwards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from segtrt.engine.cache import current_target, read_metadata
from segtrt.engine.flavors import load_flavor
from segtrt.engine.inspect import IOSpec, LoadedEngine, deserialize
from segtrt.errors import BackendUnavailableError, EngineError
from segtrt.runners.base import Runner
from segtrt.runners.binding import OutputBuffers, SideStream, device_index, torch_dtype

log = logging.getLogger(__name__)

#: IExecutionContext methods the runner calls on every TensorRT it supports (10.x, 11.x, TensorRT-RTX 1.x);
#: checked at activation so that another release fails with one line instead of an AttributeError mid-case.
REQUIRED_CONTEXT_API = ("set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3")


class EngineBindings:
    """Bookkeeping between one execution context and torch buffers; device-agnostic.

    ``bind(shape)`` sets the input shape on the context when it changes, returns the (input, output)
    buffers for that shape and binds their addresses. Input: (N, C, Z, Y, X) in the engine's input
    dtype; output: the shape the context reports, in the engine's output dtype. With ``per_shape``
    every batch shape keeps its own buffers (CUDA graphs hold their addresses).
    """

    def __init__(self, context: Any, inputs: tuple[str, torch.dtype], outputs: tuple[str, torch.dtype],
                 device: torch.device, per_shape: bool = False) -> None:
        self.context = context
        self.input_name, self.input_dtype = inputs
        self.output_name, self.output_dtype = outputs
        self.per_shape = per_shape
        self.bound_shape: tuple[int, ...] | None = None
        self._inputs = OutputBuffers(device)
        self._outputs = OutputBuffers(device)

    def bind(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if shape != self.bound_shape:
            if not self.context.set_input_shape(self.input_name, shape):
                raise EngineError(f"the engine rejected input shape {shape} for '{self.input_name}'")
            self.bound_shape = shape
        suffix = f"@{shape}" if self.per_shape else ""
        inp = self._inputs.get(self.input_name + suffix, shape, self.input_dtype)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = self._outputs.get(self.output_name + suffix, out_shape, self.output_dtype)
        self.context.set_tensor_address(self.input_name, inp.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        return inp, out

    def release(self) -> None:
        self._inputs.release()
        self._outputs.release()
        self.bound_shape = None


class TensorRTRunner(Runner):
    """Runner over a serialized plan (a file path, or the plan's bytes).

    flavor: ``tensorrt`` / ``tensorrt-rtx``; default: the one in the plan's metadata file, else
    ``auto``. Input batches are (N, C, Z, Y, X) float32; they are cast to the engine's input dtype.
    """

    name = "tensorrt"

    def __init__(self, engine: str | Path | bytes, device: torch.device | str = "cuda", *,
                 flavor: str | None = None, cuda_graph: bool = False) -> None:
        super().__init__(device)
        self.source = engine if isinstance(engine, bytes) else Path(engine)
        if isinstance(self.source, Path) and not self.source.is_file():
            raise EngineError(f"engine file {self.source} does not exist; build it with segtrt build")
        self.metadata = None if isinstance(self.source, bytes) else read_metadata(self.source)
        self.flavor_name = flavor or (self.metadata.flavor if self.metadata else "auto")
        self.cuda_graph = cuda_graph
        self.io: tuple[IOSpec, ...] = self.metadata.io if self.metadata else ()
        if self.io:
            self._set_batch_limits()
        self._loaded: LoadedEngine | None = None
        self._context: Any = None
        self._bindings: EngineBindings | None = None
        self._side: SideStream | None = None
        self._graphs: dict[tuple[int, ...], torch.cuda.CUDAGraph] = {}

    # lifecycle -------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        if self.device.type != "cuda":
            raise BackendUnavailableError(f"TensorRT runs on CUDA devices only, got device '{self.device}'")
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device '{self.device}' was requested but torch sees no CUDA device")
        plan = self.source if isinstance(self.source, bytes) else self.source.read_bytes()
        self._warn_if_other_target()
        flavor = load_flavor(self.flavor_name)
        with torch.cuda.device(device_index(self.device)):
            self._loaded = deserialize(plan, flavor)
            self._context = self._loaded.engine.create_execution_context()
        if self._context is None:
            reason = "; ".join(self._loaded.logger.errors[-2:]) or "no reason given"
            raise EngineError(f"{flavor.label} could not create an execution context: {reason}")
        missing = [name for name in REQUIRED_CONTEXT_API if not hasattr(self._context, name)]
        if missing:
            raise BackendUnavailableError(
                f"{flavor.label} lacks {', '.join(missing)} on its execution context; segtrt needs "
                "TensorRT 10.x/11.x or TensorRT-RTX 1.x"
            )
        self.io = self._loaded.io_specs()
        inp, out = self._single_io()
        self._set_batch_limits()
        engine = self._loaded.engine
        self._bindings = EngineBindings(
            self._context,
            (inp.name, torch_dtype(engine.get_tensor_dtype(inp.name))),
            (out.name, torch_dtype(engine.get_tensor_dtype(out.name))),
            self.device,
            per_shape=self.cuda_graph,
        )
        self._side = SideStream(self.device)

    def deactivate_impl(self) -> None:
        if self._side is not None and self._side.stream is not None:
            self._side.stream.synchronize()
        self._graphs.clear()
        if self._bindings is not None:
            self._bindings.release()
        self._bindings = self._context = self._loaded = self._side = None

    # inference -------------------------------------------------------------------------------
    def infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        """batch: (N, C, Z, Y, X) on the runner's device -> logits (N, K, Z, Y, X), float32 or float16."""
        shape = tuple(batch.shape)
        self._check_shape(shape)
        with self._side.ordered() as handle:
            inp, out = self._bindings.bind(shape)
            inp.copy_(batch)  # casts to the engine's input dtype
            self._enqueue(handle, shape)
        return out

    def _enqueue(self, handle: int, shape: tuple[int, ...]) -> None:
        if not self.cuda_graph:
            self._execute(handle)
            return
        graph = self._graphs.get(shape)
        if graph is not None:
            graph.replay()
            return
        self._check_capturable(handle)
        self._execute(handle)  # first enqueue does shape-dependent setup that must stay out of the graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._side.stream):
            self._execute(self._side.handle)
        self._graphs[shape] = graph
        log.debug("captured a CUDA graph for input shape %s", shape)

    def _check_capturable(self, handle: int) -> None:
        """CUDA-graph capture only where this TensorRT says the context can be captured on the stream.

        ``IExecutionContext.is_stream_capturable`` is not in every release (absent from TensorRT 10.16's
        Python API, for one): without it capturability is unknown, and capture is refused, not tried.
        """
        flavor = self._loaded.flavor
        if not hasattr(self._context, "is_stream_capturable"):
            raise BackendUnavailableError(
                f"{flavor.label} cannot say whether an engine may be captured in a CUDA graph "
                "(no IExecutionContext.is_stream_capturable); run with cuda_graph=False"
            )
        if not self._context.is_stream_capturable(handle):
            raise BackendUnavailableError("this engine cannot be captured in a CUDA graph; run with cuda_graph=False")

    def _execute(self, handle: int) -> None:
        if not self._context.execute_async_v3(handle):
            reason = "; ".join(self._loaded.logger.errors[-2:]) or "no reason given"
            raise EngineError(f"TensorRT failed to enqueue the engine: {reason}")

    # helpers ---------------------------------------------------------------------------------
    def _warn_if_other_target(self) -> None:
        if self.metadata is None:
            return
        built_for = self.metadata.fields.get("gpu_name")
        here = current_target(self.device).gpu_name
        if built_for != here:
            log.warning("engine %s was built for '%s', this GPU is '%s'", self.source, built_for, here)

    def _single_io(self) -> tuple[IOSpec, IOSpec]:
        inputs = [s for s in self.io if s.mode == "input"]
        outputs = [s for s in self.io if s.mode == "output"]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(
                f"segtrt runs engines with one input and one output, this one has {len(inputs)} and "
                f"{len(outputs)}; export the network without deep supervision"
            )
        return inputs[0], outputs[0]

    def _set_batch_limits(self) -> None:
        inp = next(s for s in self.io if s.mode == "input")
        if inp.profile is None:
            self.fixed_batch_size = self.max_batch_size = inp.shape[0]
        else:
            self.fixed_batch_size = None
            self.max_batch_size = inp.profile[2][0]

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        inp = next(s for s in self.io if s.mode == "input")
        if shape[1:] != inp.shape[1:]:
            raise EngineError(
                f"the engine takes patches of shape {inp.shape[1:]} (C, Z, Y, X), got {shape[1:]}; "
                "build the engine from this model's ONNX export"
            )
        if inp.profile is not None and not inp.profile[0][0] <= shape[0] <= inp.profile[2][0]:
            raise EngineError(
                f"batch of {shape[0]} patches is outside the engine's profile "
                f"[{inp.profile[0][0]}, {inp.profile[2][0]}]; rebuild with --max-batch {shape[0]}"
            )

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            engine="<bytes>" if isinstance(self.source, bytes) else str(self.source),
            flavor=self._loaded.flavor.label if self._loaded else self.flavor_name,
            cuda_graph=self.cuda_graph,
            io=[spec.as_dict() for spec in self.io],
        )
        return info
