"""``segtrt info``: what this machine can run (segtrt.machine_info), as text or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


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
    from segtrt.machine_info import collect_info, engine_report

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
