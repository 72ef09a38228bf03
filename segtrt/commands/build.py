"""``segtrt build``: build a TensorRT / TensorRT-RTX engine from an ONNX file, or compile a model folder.

For an ONNX file: writes the plan and, beside it, ``<engine>.json`` (what it was built from and for),
atomically. An existing engine at the output path is replaced. For an nnU-Net model folder: compiles
its torch networks into segtrt's cache (segtrt.commands.build_compiled).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from segtrt.commands import build_compiled

if TYPE_CHECKING:
    from segtrt.engine.cache import CachedEngine


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build a TensorRT engine from an ONNX file, or compile a model folder's torch networks",
        description="Build a TensorRT (or TensorRT-RTX) engine from an ONNX file exported by segtrt, or compile "
                    "the torch networks of an nnU-Net model folder ahead of time (segtrt predict --compile).",
    )
    parser.add_argument("onnx", type=Path, metavar="SOURCE",
                        help="the ONNX file (from segtrt export), or an nnU-Net model folder")
    parser.add_argument("-o", "--output", type=Path, help="engine file to write (default: ONNX path with .engine)")
    parser.add_argument("--min-batch", type=int, help="smallest batch of a dynamic-batch graph (default 1)")
    parser.add_argument("--opt-batch", type=int, help="batch the engine is tuned for (default: max, or 4)")
    parser.add_argument("--max-batch", type=int, help="largest batch of a dynamic-batch graph (default: opt)")
    parser.add_argument("--opt-level", type=int, help="builder optimization level 0-5 (TensorRT default 3)")
    parser.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit in MB")
    parser.add_argument("--timing-cache", type=Path, metavar="PATH", help="timing cache file, read and updated")
    parser.add_argument(
        "--flavor",
        choices=("auto", "tensorrt", "tensorrt-rtx"),
        default="auto",
        help="which TensorRT builds the engine (auto: full TensorRT when installed, else TensorRT-RTX)",
    )
    build_compiled.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if Path(args.onnx).is_dir():
        return build_compiled.run_model_folder(args)
    from segtrt.engine.build import BuildOptions
    from segtrt.engine.cache import get_or_build

    options = BuildOptions(
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        opt_level=args.opt_level,
        workspace_mb=args.workspace,
        timing_cache=args.timing_cache,
        flavor=args.flavor,
    )
    output = args.output or Path(args.onnx).with_suffix(".engine")
    engine = get_or_build(args.onnx, options, engine_path=output, rebuild=True)
    print(summary(engine))
    return 0


def summary(engine: "CachedEngine") -> str:
    """Lines describing a freshly built engine, for the terminal."""
    from segtrt.engine.cache import CPU_BUILD_TARGET

    meta = engine.metadata
    fields = meta.fields
    lines = [
        f"wrote {engine.plan_path} ({meta.plan_bytes / 1e6:.1f} MB) with {fields['flavor']} "
        f"{fields['trt_version']} in {meta.build_seconds:.1f} s",
        f"  metadata: {engine.plan_path}.json",
    ]
    for spec in meta.io:
        line = f"  {spec.mode} '{spec.name}': {spec.dtype} {list(spec.shape)}"
        if spec.profile is not None:
            line += " profile min/opt/max " + " / ".join(str(list(s)) for s in spec.profile)
        lines.append(line)
    if meta.compute_dtypes:
        counts = ", ".join(f"{n} {dtype}" for dtype, n in sorted(meta.compute_dtypes.items()))
        lines.append(f"  convolutions: {counts}")
    if fields["gpu_name"] == CPU_BUILD_TARGET:
        lines.append(
            f"  built without a GPU (target '{CPU_BUILD_TARGET}'): it runs where this TensorRT's runtime supports "
            "the GPU; the engine cache keys it apart from GPU builds"
        )
    else:
        lines.append(f"  built for {fields['gpu_name']} (compute capability {fields['compute_capability']})")
    return "\n".join(lines)
