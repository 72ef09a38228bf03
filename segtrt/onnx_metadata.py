"""The ``segtrt.*`` entries of an ONNX file's ``metadata_props``: the key prefix and the parser.

Kept below both the exporter (which writes them, segtrt.export.metadata) and the runners (which read
them), so that neither imports the other for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from segtrt.errors import ExportError

METADATA_PREFIX = "segtrt."


def parse_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """``segtrt.*`` entries of an ONNX ``metadata_props`` mapping, prefix removed, JSON decoded."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith(METADATA_PREFIX):
            try:
                out[key[len(METADATA_PREFIX):]] = json.loads(value)
            except ValueError:
                out[key[len(METADATA_PREFIX):]] = value
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """segtrt's metadata of an exported .onnx file (keys without the ``segtrt.`` prefix)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError, and others for truncated or foreign files
        raise ExportError(
            f"{path} is not a readable ONNX model ({type(error).__name__}: {error}); "
            "expected an ONNX file written by segtrt export"
        ) from None
    return parse_metadata({p.key: p.value for p in model.metadata_props})
