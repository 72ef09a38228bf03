"""``segtrt info``: what this machine can run (GPUs, torch/CUDA/cuDNN, TensorRT flavors, ONNX Runtime).

``collect_info()`` returns the report as a dict (also used in run reports); ``engine_report(path)``
describes one engine file: its metadata and whether the TensorRT runtime here can load it.
"""

from __future__ import annotations

import argparse
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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show GPUs, CUDA, TensorRT and ONNX Runtime versions",
        description="Show what this machine can run: GPUs, torch/CUDA/cuDNN, TensorRT flavors, ONNX Runtime.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--engine", type=Path, metavar="PATH", help="also describe this engine file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.engine is not None:
        info["engine"] = engine_report(args.engine)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def format_info(info: dict[str, Any]) -> str:
    """The report as aligned text lines."""
    lines = [
        f"segtrt       {info['segtrt']} (python {info['python']}, {info['platform']})",
        f"torch        {info['torch']} (CUDA {info['torch_cuda']}, cuDNN {info['cudnn']})",
    ]
    if not info["gpus"]:
        lines.append("GPUs         none visible to torch")
    for gpu in info["gpus"]:
        lines.append(
            f"GPU {gpu['index']}        {gpu['name']} (compute capability {gpu['compute_capability']}, "
            f"{gpu['memory_gib']} GiB)"
        )
    for entry in info["tensorrt"]:
        lines.append(f"{entry['name']:<13}{_flavor_line(entry)}")
    ort = info["onnxruntime"]
    ort_line = f"{ort['version']} (providers: {', '.join(ort['providers'])})" if ort["installed"] else "not installed"
    lines.append(f"onnxruntime  {ort_line}")
    if "engine" in info:
        engine = info["engine"]
        state = "loadable here" if engine["loadable"] else f"not loadable here: {engine['reason']}"
        lines.append(f"engine       {engine['path']} ({engine['bytes']} bytes): {state}")
    return "\n".join(lines)


def _flavor_line(entry: dict[str, Any]) -> str:
    if not entry["installed"]:
        return f"not installed ({entry['error']})"
    words = {True: "runs", False: "does not run", None: "not known before loading an engine"}
    support = "; ".join(f"GPU {i}: {words[ok]}" for i, ok in entry["runtime_supports"].items())
    return f"{entry['version']}" + (f" ({support})" if support else " (runtime needs a GPU; none visible)")
