"""torch -> ONNX ModelProto (torch's ``torch.export``-based exporter, quietened), the atomic save
of a file, and small readers of a ModelProto (I/O dims, opset)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from segtrt.errors import ExportError
from segtrt.export.options import AXES, INPUT_NAME, OUTPUT_NAME, ExportOptions
from segtrt.onnx_fp16 import DEFAULT_KEEP_FP32, HalfPrecisionNetwork

log = logging.getLogger(__name__)

#: Libraries whose INFO logging floods an export (one line per deduplicated initializer).
_CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")


def torch_export_graph(network: nn.Module, patch: tuple[int, int, int], in_channels: int, options: ExportOptions,
                  stride: tuple[int, int, int] | None) -> Any:
    """The ONNX ModelProto of ``network`` (or its half-precision wrapper) with segtrt's I/O names."""
    module = network
    if options.precision == "fp16":
        keep = DEFAULT_KEEP_FP32 if options.norm_precision == "fp32" else ()
        module = HalfPrecisionNetwork(network, keep_fp32=keep)
    example_batch = 2 if options.dynamic_batch else options.batch  # an example batch of 1 gets specialised
    example = torch.zeros((example_batch, in_channels, *patch), dtype=torch.float32, device=_device_of(network))
    dims: dict[int, Any] = {}
    if options.dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1)
    if options.dynamic_spatial:
        for axis, (name, s) in enumerate(zip(AXES, stride), start=2):
            dims[axis] = s * torch.export.Dim(name, min=1)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, verbose=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], opset_version=options.opset, dynamic_shapes=(dims,) if dims else None,
            )
    except Exception as exc:  # the exporter raises many types; the user needs its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed for {type(network).__name__}: {first}") from exc
    return program.model_proto


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress, warns and logs at INFO; route all of it to DEBUG here."""
    buffer = io.StringIO()
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buffer):
            warnings.simplefilter("always")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    for line in buffer.getvalue().splitlines():
        log.debug("exporter: %s", line)
    for w in caught:
        log.debug("exporter warning: %s", w.message)


def save_model(model: Any, path: Path) -> None:
    import onnx

    size = model.ByteSize()
    if size >= 2**31:
        raise ExportError(f"the exported graph is {size / 2**30:.1f} GiB; single-file ONNX is limited to 2 GiB")
    onnx.save_model(model, str(path))


def _device_of(network: nn.Module) -> torch.device:
    param = next(network.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def value_dims(value_info: Any) -> tuple[int | str, ...]:
    return tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in value_info.type.tensor_type.shape.dim)


def static_dim(value_info: Any, axis: int) -> int:
    dim = value_dims(value_info)[axis]
    if not isinstance(dim, int):
        raise ExportError(f"the exported output has a symbolic class dimension {dim!r}; expected a number")
    return dim


def model_opset(model: Any) -> int:
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))
