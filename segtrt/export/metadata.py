"""The ``segtrt.*`` ``metadata_props`` of an exported graph: building, validating, writing and
reading them (values are JSON strings in the file)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Mapping, Sequence

import torch

import segtrt
from segtrt.errors import ExportError
from segtrt.export.options import INPUT_NAME, OUTPUT_NAME, ExportOptions
from segtrt.onnx_metadata import METADATA_PREFIX



def build_metadata(
    extra: Mapping[str, Any], *, patch_size: Sequence[int], in_channels: int, num_classes: int,
    options: ExportOptions, total_stride: Sequence[int] | None, opset: int,
) -> dict[str, Any]:
    """The ``segtrt.*`` metadata of an export: segtrt's own entries, then ``extra`` (which may add
    keys such as model_identity, fold, configuration, labels, but not replace segtrt's)."""
    meta: dict[str, Any] = {
        "format": "segtrt-onnx-1",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "layout": "NCZYX",
        "patch_size": [int(p) for p in patch_size],
        "in_channels": int(in_channels),
        "num_classes": int(num_classes),
        "precision": options.precision,
        "total_stride": None if total_stride is None else [int(s) for s in total_stride],
        "opset": int(opset),
        "segtrt_version": segtrt.__version__,
        "torch_version": torch.__version__,
        "export_options": asdict(options),
    }
    check_extra_metadata(extra)
    meta.update({str(k): v for k, v in extra.items()})
    return {f"{METADATA_PREFIX}{k}": v for k, v in meta.items()}


#: Metadata keys segtrt writes itself (``build_metadata``); callers may not set them.
RESERVED_KEYS = frozenset({
    "format", "input_name", "output_name", "layout", "patch_size", "in_channels", "num_classes", "precision",
    "total_stride", "opset", "segtrt_version", "torch_version", "export_options",
})


def check_extra_metadata(extra: Mapping[str, Any]) -> None:
    """ExportError unless every entry has a free key and a JSON-serialisable value."""
    for key, value in extra.items():
        if key in RESERVED_KEYS:
            raise ExportError(f"metadata key {key!r} is written by segtrt itself; use another name")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ExportError(f"metadata {key!r} must be JSON-serialisable, got {type(value).__name__}") from exc


def set_metadata(model: Any, meta: Mapping[str, Any]) -> None:
    import onnx

    onnx.helper.set_model_props(model, {k: json.dumps(v) for k, v in meta.items()})
