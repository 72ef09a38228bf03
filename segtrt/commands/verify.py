"""``segtrt verify``: compare a backend with the torch float32 reference on a model's own networks.

Without scans the patches are synthetic (noise and smooth fields); with scans they are cut out of
the preprocessed scans, and each scan is also segmented end to end by both backends and the label
maps compared (segtrt.verify.model). Exit code 0 when everything is within tolerance, 1 when not
(2: a user error).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from segtrt.config import DEFAULT_MODEL_DIR, PRECISIONS, VERIFY_BACKENDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="compare a backend with the torch fp32 reference",
        description="Run a model's networks on a backend and on torch float32 (TF32 off) and compare logits "
        "(max/mean difference, argmax agreement, Dice per label) on test patches; with scans, also compare "
        "whole-case label maps. Exit code 1 when a comparison is past its tolerance.",
        epilog="examples:\n"
        "  segtrt verify scan.nii.gz -m MODEL_FOLDER --backend onnxruntime\n"
        "  segtrt verify dicom_series_folder/ -m MODEL_FOLDER --backend tensorrt --precision fp16 --json v.json",
    )
    parser.add_argument("scans", nargs="*", type=Path, metavar="SCAN",
                        help="images or case folders (as for predict); default: synthetic patches only")
    parser.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL_DIR, help="nnU-Net v2 model folder")
    parser.add_argument("-f", "--fold", default=None, help="fold to verify (default: every fold)")
    parser.add_argument("-c", "--configuration", default=None, help="configuration (default: the checkpoint's)")
    parser.add_argument("--backend", choices=VERIFY_BACKENDS, default="onnxruntime", help="(default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="(default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default=None,
                        help="ONNX Runtime provider (default: cpu on the CPU, cuda on a GPU)")
    parser.add_argument("--onnx", type=Path, nargs="+", default=None,
                        help="existing ONNX file(s), one per fold, instead of exporting to a temporary folder")
    parser.add_argument("--patches", type=int, default=4,
                        help="patch batches (per scan when scans are given) (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="patches per batch (default: %(default)s)")
    parser.add_argument("--tta", action="store_true", help="mirroring in the whole-case comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in fold_K/")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load checkpoints holding Python objects outside nnU-Net's allow-list (runs pickled code)")
    parser.add_argument("--json", type=Path, default=None, help="write the comparison as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtrt.io.writers import atomic_write_bytes, check_output_file
    from segtrt.verify.model import VerifyOptions, verify_model_folder

    options = VerifyOptions(backend=args.backend, precision=args.precision, provider=args.provider,
                            onnx=tuple(args.onnx) if args.onnx else None, patches=args.patches, batch=args.batch,
                            tta=args.tta, seed=args.seed)
    if args.json is not None:
        check_output_file(args.json)
    report = verify_model_folder(args.model, args.scans, options, fold=args.fold, configuration=args.configuration,
                                 checkpoint_name=args.checkpoint, trust=args.trust_checkpoint, device=args.device)
    print(report)
    if args.json is not None:
        atomic_write_bytes(args.json, (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    return 0 if report.passed else 1
