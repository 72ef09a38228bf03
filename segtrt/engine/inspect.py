"""Read the I/O contract of a network or plan: tensor names, dtypes, shapes, optimization profiles.

Two sources, because a plan cannot always be opened:

- ``network_io_specs`` reads the parsed network and the profile handed to the builder. It needs no GPU,
  so it is what a CPU-only build records in the engine's metadata.
- ``inspect_plan`` deserializes the plan with the TensorRT runtime and reads the engine itself. The
  runtime needs a CUDA driver and a GPU it supports; otherwise it raises BackendUnavailableError quoting
  TensorRT's reason (on a CPU-only machine: "CUDA driver version is insufficient ...").

Shapes are in the network's order, (N, C, Z, Y, X) for segtrt's graphs; -1 marks a dynamic dimension.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from segtrt.engine.flavors import Flavor
from segtrt.errors import BackendUnavailableError

log = logging.getLogger(__name__)

#: TensorRT ``DataType`` member name -> the dtype name segtrt stores (numpy / torch spelling).
DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class IOSpec:
    """One engine input or output.

    mode: ``input`` or ``output``. dtype: e.g. ``float32``. shape: -1 on dynamic axes.
    profile: (min, opt, max) shapes of a dynamic input in optimization profile 0, else None.
    """

    name: str
    mode: str
    dtype: str
    shape: Shape
    profile: tuple[Shape, Shape, Shape] | None = None

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.shape) if d < 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "profile": None if self.profile is None else [list(s) for s in self.profile],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IOSpec":
        profile = data.get("profile")
        return cls(
            name=str(data["name"]),
            mode=str(data["mode"]),
            dtype=str(data["dtype"]),
            shape=tuple(int(d) for d in data["shape"]),
            profile=None if profile is None else tuple(tuple(int(d) for d in s) for s in profile),
        )


def dtype_name(trt_dtype: Any) -> str:
    """segtrt's name for a ``trt.DataType`` member (its own name, lower-cased, when not mapped)."""
    return DTYPE_NAMES.get(trt_dtype.name, trt_dtype.name.lower())


def network_io_specs(network: Any, profile: Any | None) -> tuple[IOSpec, ...]:
    """I/O of a parsed ``INetworkDefinition``; profile shapes from ``profile`` (None = static graph)."""
    specs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        bounds = None
        if profile is not None and any(d < 0 for d in shape):
            bounds = tuple(tuple(s) for s in profile.get_shape(tensor.name))
        specs.append(IOSpec(tensor.name, "input", dtype_name(tensor.dtype), shape, bounds))
    for i in range(network.num_outputs):
        tensor = network.get_output(i)
        specs.append(IOSpec(tensor.name, "output", dtype_name(tensor.dtype), tuple(tensor.shape)))
    return tuple(specs)


def engine_io_specs(engine: Any, trt: Any) -> tuple[IOSpec, ...]:
    """I/O of a deserialized ``ICudaEngine`` (profile 0 for dynamic inputs)."""
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(engine.get_tensor_shape(name))
        bounds = None
        if is_input and any(d < 0 for d in shape):
            bounds = tuple(tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
        mode = "input" if is_input else "output"
        specs.append(IOSpec(name, mode, dtype_name(engine.get_tensor_dtype(name)), shape, bounds))
    return tuple(specs)


@dataclass
class LoadedEngine:
    """A deserialized engine with the runtime and logger it depends on (kept alive together)."""

    flavor: Flavor
    runtime: Any
    engine: Any
    logger: Any

    def io_specs(self) -> tuple[IOSpec, ...]:
        return engine_io_specs(self.engine, self.flavor.module)


def deserialize(plan: bytes, flavor: Flavor) -> LoadedEngine:
    """Deserialize a plan; BackendUnavailableError quoting TensorRT's reason when it cannot."""
    logger = flavor.make_logger()
    runtime = flavor.module.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        reason = "; ".join(_one_line(m) for m in logger.errors[:2]) or "no reason given"
        raise BackendUnavailableError(
            f"{flavor.label} cannot load this engine on this machine: {reason}. Build the engine on the "
            "machine that runs it, with a TensorRT whose runtime supports its GPU"
        )
    return LoadedEngine(flavor, runtime, engine, logger)


def inspect_plan(plan: bytes, flavor: Flavor) -> tuple[IOSpec, ...]:
    """I/O specs read from the plan itself (needs a GPU the runtime supports, see module docstring)."""
    return deserialize(plan, flavor).io_specs()


def _one_line(message: str) -> str:
    return " ".join(message.split())
