"""``segtrt export``: write an nnU-Net v2 model's networks as checked ONNX files (one per fold)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from segtrt.config import DEFAULT_MODEL_DIR, PRECISIONS

if TYPE_CHECKING:
    from segtrt.export import ExportResult


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model's networks to ONNX",
        description="Export the networks of an nnU-Net v2 model folder to ONNX (input 'image' (N, C, Z, Y, X) "
        "float32, output 'logits' (N, K, Z, Y, X) float32), one file per fold, each checked with ONNX Runtime "
        "against the torch network before it is written.",
    )
    parser.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL_DIR,
                        help="nnU-Net v2 model folder (default: the bundled sample model)")
    parser.add_argument("-f", "--fold", default=None,
                        help="fold to export, e.g. 0 or all (default: every fold; several folds are written to "
                        "<stem>_fold<K>.onnx)")
    parser.add_argument("-c", "--configuration", default=None, help="configuration (default: the checkpoint's)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    parser.add_argument("--dynamic-spatial", action="store_true",
                        help="symbolic Z, Y, X (multiples of the network's total stride)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp16: half-precision graph with float32 inputs/outputs and float32 instance norms")
    parser.add_argument("--norm-precision", choices=PRECISIONS, default="fp32",
                        help="precision of the instance norms in an fp16 graph (default fp32)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in fold_K/")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load checkpoints holding Python objects outside nnU-Net's allow-list (runs pickled code)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime numerical check")
    parser.add_argument("--json", type=Path, default=None, help="also write what was exported as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtrt.export import export_model_folder

    results = export_model_folder(
        args.model,
        args.output,
        fold=args.fold,
        configuration=args.configuration,
        checkpoint_name=args.checkpoint,
        trust=args.trust_checkpoint,
        batch=args.batch,
        dynamic_batch=args.dynamic_batch,
        dynamic_spatial=args.dynamic_spatial,
        precision=args.precision,
        opset=args.opset,
        norm_precision=args.norm_precision,
        check=not args.no_check,
    )
    for result in results:
        print(describe(result))
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    return 0


def describe(result: "ExportResult") -> str:
    """A few lines about one exported file, for the terminal."""
    meta = result.metadata
    lines = [
        f"wrote {result.path} (fold {meta.get('segtrt.fold')}, {result.precision}, opset {result.opset}) "
        f"in {result.export_seconds:.1f} s",
        f"  image {list(result.input_shape)} -> logits {list(result.output_shape)}",
    ]
    for check in result.checks:
        lines.append(
            f"  check: max|diff| {check.max_rel:.2e} of max|logit|, argmax agreement {check.argmax_agreement:.6f} "
            f"({check.label})"
        )
    if not result.checks:
        lines.append("  not checked numerically (--no-check)")
    return "\n".join(lines)
