"""What this machine can run: GPUs, torch/CUDA/cuDNN, TensorRT flavors, ONNX Runtime (``segtrt info``).

``collect_info()`` returns the report as a dict (also used in run reports); ``engine_report(path)``
describes one engine file: its metadata and whether the TensorRT runtime here can load it.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from segtrt import __version__
from segtrt.engine.cache import read_metadata
from segtrt.engine.flavors import import_flavor, probe_flavors
from segtrt.engine.inspect import inspect_plan
from segtrt.errors import SegtrtError


def gpu_info() -> list[dict[str, Any]]:
    """Every CUDA device torch sees: index, name, compute capability ("9.0"), memory in GiB."""
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({
            "index": index,
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
        })
    return gpus


def tensorrt_info(gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each TensorRT flavor: installed, version or import error, and per GPU whether its runtime runs there
    (True / False / None = not known before loading an engine)."""
    report = []
    for status in probe_flavors():
        entry = status.as_dict()
        if status.installed:
            flavor = import_flavor(status.name)
            entry["runtime_supports"] = {
                str(gpu["index"]): flavor.runtime_supports(tuple(int(v) for v in gpu["compute_capability"].split(".")))
                for gpu in gpus
            }
        report.append(entry)
    return report


def onnxruntime_info() -> dict[str, Any]:
    """ONNX Runtime's version and execution providers, or that it is not installed."""
    try:
        import onnxruntime
    except ImportError as exc:
        return {"installed": False, "error": str(exc)}
    return {
        "installed": True,
        "version": onnxruntime.__version__,
        "providers": list(onnxruntime.get_available_providers()),
    }


def collect_info() -> dict[str, Any]:
    """The whole report as a JSON-able dict."""
    gpus = gpu_info()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "segtrt": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": cudnn,
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
        "tensorrt": tensorrt_info(gpus),
        "onnxruntime": onnxruntime_info(),
    }


def engine_report(path: str | Path) -> dict[str, Any]:
    """An engine file's metadata and whether the runtime here can deserialize it (with the reason)."""
    path = Path(path)
    if not path.is_file():
        raise SegtrtError(f"engine file {path} does not exist; pass the path of a built engine")
    metadata = read_metadata(path)
    report: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size}
    report["metadata"] = json.loads(metadata.to_json()) if metadata else None
    if metadata is None:
        report.update(loadable=False, reason="no metadata file beside it: the TensorRT that built it is unknown")
        return report
    try:
        specs = inspect_plan(path.read_bytes(), import_flavor(metadata.flavor))
    except SegtrtError as exc:
        report.update(loadable=False, reason=str(exc))
    else:
        report.update(loadable=True, io=[spec.as_dict() for spec in specs])
    return report
