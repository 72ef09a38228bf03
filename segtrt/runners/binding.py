"""Device-buffer helpers shared by the runners that bind raw pointers (ONNX Runtime, TensorRT).

Those runtimes read and write memory they do not own. The rules kept here:

* torch allocates every buffer (inputs are made contiguous in the graph's dtype, outputs are
  preallocated), and the runtime only ever sees ``tensor.data_ptr()``;
* every tensor whose pointer was handed to a runtime stays referenced (``OutputBuffers``,
  ``KeepAlive``) until the runtime is done with it;
* the runtime runs on its own stream, ordered after the caller's stream before it starts and
  before the caller touches the outputs (``SideStream``). On the CPU all of this is a no-op.

Dtypes arrive in four spellings (numpy, ONNX ``TensorProto`` numbers, ONNX Runtime's
``"tensor(float)"`` strings, TensorRT ``DataType`` members); ``torch_dtype`` turns any of them into
a torch dtype so the runners never import each other's runtime to compare types.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch

#: numpy dtype -> torch dtype for the types a segmentation graph can carry.
NUMPY_TO_TORCH: dict[np.dtype, torch.dtype] = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.bool_): torch.bool,
}
TORCH_TO_NUMPY: dict[torch.dtype, np.dtype] = {v: k for k, v in NUMPY_TO_TORCH.items()}

#: ONNX ``TensorProto.DataType`` numbers (stable in the ONNX spec) -> torch dtype.
ONNX_TO_TORCH: dict[int, torch.dtype] = {
    1: torch.float32,  # FLOAT
    2: torch.uint8,  # UINT8
    3: torch.int8,  # INT8
    6: torch.int32,  # INT32
    7: torch.int64,  # INT64
    9: torch.bool,  # BOOL
    10: torch.float16,  # FLOAT16
    11: torch.float64,  # DOUBLE
    16: torch.bfloat16,  # BFLOAT16
}
TORCH_TO_ONNX: dict[torch.dtype, int] = {v: k for k, v in ONNX_TO_TORCH.items()}

#: ONNX Runtime's type strings (``NodeArg.type``) -> torch dtype.
ORT_TO_TORCH: dict[str, torch.dtype] = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
    "tensor(bfloat16)": torch.bfloat16,
    "tensor(int8)": torch.int8,
    "tensor(uint8)": torch.uint8,
    "tensor(int32)": torch.int32,
    "tensor(int64)": torch.int64,
    "tensor(bool)": torch.bool,
}

#: TensorRT ``DataType`` member names -> torch dtype (works for tensorrt and tensorrt_rtx).
TENSORRT_TO_TORCH: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def torch_dtype(spec: Any) -> torch.dtype:
    """The torch dtype for ``spec``: a torch dtype, numpy dtype/type, ONNX elem-type number,
    ONNX Runtime type string (``"tensor(float16)"``) or TensorRT ``DataType`` member."""
    if isinstance(spec, torch.dtype):
        return spec
    if isinstance(spec, str) and spec in ORT_TO_TORCH:
        return ORT_TO_TORCH[spec]
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if int(spec) in ONNX_TO_TORCH:
            return ONNX_TO_TORCH[int(spec)]
        raise TypeError(f"ONNX element type {int(spec)} has no torch equivalent here")
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name in TENSORRT_TO_TORCH and not isinstance(spec, np.dtype):
        return TENSORRT_TO_TORCH[name]
    try:
        return NUMPY_TO_TORCH[np.dtype(spec)]
    except (TypeError, KeyError) as exc:
        raise TypeError(f"cannot map {spec!r} to a torch dtype") from exc


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype for a torch dtype (ONNX Runtime's ``element_type`` wants this)."""
    try:
        return TORCH_TO_NUMPY[dtype]
    except KeyError as exc:
        raise TypeError(f"torch dtype {dtype} has no numpy equivalent") from exc


def as_bindable(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` as a contiguous tensor of ``dtype`` on its device (a copy only when needed).

    The result's ``data_ptr()`` can be handed to a runtime; keep the returned tensor alive (see
    ``KeepAlive``) until the runtime has finished reading it.
    """
    return tensor.to(dtype=dtype).contiguous()


class OutputBuffers:
    """Preallocated output tensors, reused while the requested shape and dtype stay the same.

    ``get(name, shape, dtype)`` returns the tensor for ``name``; a new shape or dtype replaces it.
    The object holds a reference to every tensor it handed out, so a runtime that was given
    ``data_ptr()`` never writes into freed memory. Call ``release()`` when the runtime is gone.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        buffer = self._buffers.get(name)
        if buffer is None or tuple(buffer.shape) != shape or buffer.dtype != dtype:
            buffer = torch.empty(shape, dtype=dtype, device=self.device)
            self._buffers[name] = buffer
        return buffer

    def __contains__(self, name: str) -> bool:
        return name in self._buffers

    def release(self) -> None:
        self._buffers.clear()


class KeepAlive:
    """References to tensors whose pointers a runtime holds for the current call (inputs).

    ``hold(tensor)`` returns the tensor; ``clear()`` drops them once the runtime has finished
    (after the side stream has been joined, see ``SideStream``).
    """

    def __init__(self) -> None:
        self._held: list[torch.Tensor] = []

    def hold(self, tensor: torch.Tensor) -> torch.Tensor:
        self._held.append(tensor)
        return tensor

    def clear(self) -> None:
        self._held.clear()

    def __len__(self) -> int:
        return len(self._held)


def device_index(device: torch.device) -> int:
    """The CUDA ordinal of ``device`` (the current device when it has no index); 0 on the CPU."""
    if device.type != "cuda":
        return 0
    return device.index if device.index is not None else torch.cuda.current_device()


class SideStream:
    """A dedicated CUDA stream for a runtime, ordered with the caller's stream both ways.

    ``with side.ordered() as handle:`` makes the side stream wait for the work already queued on
    the caller's current stream (so inputs are ready), yields the raw ``cudaStream_t`` value to give
    the runtime, and on exit makes the caller's stream wait for the side stream (so outputs are
    ready before the caller reads them). On the CPU the handle is 0 and nothing is ordered.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

    @property
    def handle(self) -> int:
        """The raw stream pointer (``cudaStream_t``) as an int; 0 on the CPU."""
        return int(self.stream.cuda_stream) if self.stream is not None else 0

    @contextlib.contextmanager
    def ordered(self) -> Iterator[int]:
        if self.stream is None:
            yield 0
            return
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream):
                yield self.handle
        finally:
            caller.wait_stream(self.stream)
