"""``segtrt verify``: compare a backend with the torch float32 reference on a model's own networks.

Without scans the patches are synthetic (noise and smooth fields); with scans they are cut out of
the preprocessed scans, and each scan is also segmented end to end by both backends and the label
maps compared. Exit code 0 when everything is within tolerance, 1 when not (2: a user error).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtrt.config import DEFAULT_MODEL_DIR, PRECISIONS, PredictSettings
from segtrt.errors import SegtrtError
from segtrt.verify import (
    VerifyReport,
    compare_case_labels,
    compare_folds,
    exact_float32,
    random_patches,
    scan_patches,
    tolerance_for,
)

VERIFY_BACKENDS = ("onnxruntime", "tensorrt", "torch")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="compare a backend with the torch fp32 reference",
        description="Run a model's networks on a backend and on torch float32 (TF32 off) and compare logits "
        "(max/mean difference, argmax agreement, Dice per label) on test patches; with scans, also compare "
        "whole-case label maps. Exit code 1 when a comparison is past its tolerance.",
    )
    parser.add_argument("scans", nargs="*", type=Path, metavar="SCAN",
                        help="images or case folders (as for predict); default: synthetic patches only")
    parser.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL_DIR, help="nnU-Net v2 model folder")
    parser.add_argument("-f", "--fold", default=None, help="fold to verify (default: every fold)")
    parser.add_argument("-c", "--configuration", default=None, help="configuration (default: the checkpoint's)")
    parser.add_argument("--backend", choices=VERIFY_BACKENDS, default="onnxruntime")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default=None,
                        help="ONNX Runtime provider (default: cpu on the CPU, cuda on a GPU)")
    parser.add_argument("--onnx", type=Path, nargs="+", default=None,
                        help="existing ONNX file(s), one per fold, instead of exporting to a temporary folder")
    parser.add_argument("--patches", type=int, default=4, help="patch batches (per scan when scans are given)")
    parser.add_argument("--batch", type=int, default=1, help="patches per batch")
    parser.add_argument("--tta", action="store_true", help="mirroring in the whole-case comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in fold_K/")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load checkpoints holding Python objects outside nnU-Net's allow-list (runs pickled code)")
    parser.add_argument("--json", type=Path, default=None, help="write the comparison as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtrt.devices import resolve_device
    from segtrt.nnunet import load_model

    if args.patches < 1 or args.batch < 1:
        raise SegtrtError(f"--patches and --batch must be >= 1, got {args.patches} and {args.batch}")
    device, _ = resolve_device(args.device)
    folds = None if args.fold is None else [args.fold]
    model = load_model(args.model, configuration=args.configuration, folds=folds, checkpoint_name=args.checkpoint,
                       trust=args.trust_checkpoint, device=device)
    tolerance = tolerance_for(args.precision)
    with tempfile.TemporaryDirectory(prefix="segtrt-verify-") as work:
        runners = candidate_runners(model, args, device, Path(work))
        images = _read_scans(model, args.scans) if args.scans else {}
        patches = _patches(model, args, device, images)
        label = f"{args.backend} {args.precision} vs torch fp32"
        results = compare_folds(model.networks, runners, patches, tolerance, labels=model.folder.labels, label=label)
        cases = _compare_cases(model, runners, args, device, images, tolerance.min_argmax_agreement) if images else None
    report = VerifyReport(args.backend, args.precision, str(device), tuple(model.folder.folds), tuple(results), cases)
    print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.passed else 1


def candidate_runners(model: Any, args: argparse.Namespace, device: torch.device, work: Path) -> list:
    """The runners under test, one per fold."""
    if args.backend != "onnxruntime":
        from segtrt.backends import create_runners

        settings = PredictSettings(device=str(device), backend=args.backend, precision=args.precision,
                                   batch_size=args.batch)
        return create_runners(model, settings, device)[0]
    from segtrt.runners.onnxruntime_runner import OnnxRuntimeRunner

    paths = _onnx_files(model, args, work)
    return [OnnxRuntimeRunner(path, device, provider=args.provider) for path in paths]


def _onnx_files(model: Any, args: argparse.Namespace, work: Path) -> list[Path]:
    from segtrt.export import export_loaded_model, read_metadata

    if args.onnx is None:
        results = export_loaded_model(model, work / "model.onnx", dynamic_batch=True, precision=args.precision,
                                      check=False)
        return [r.path for r in results]
    if len(args.onnx) != len(model.networks):
        raise SegtrtError(f"got {len(args.onnx)} --onnx file(s) for folds {', '.join(model.folder.folds)}; "
                          "give one per fold, in fold order, or select a fold with -f")
    for path in args.onnx:
        stored = read_metadata(path).get("precision")
        if stored is not None and stored != args.precision:
            raise SegtrtError(f"{path} is an {stored} export but --precision {args.precision} was asked for")
    return list(args.onnx)


def _read_scans(model: Any, scans: list[Path]) -> dict[Path, tuple[np.ndarray, tuple[float, ...]]]:
    """(C, Z, Y, X) image and (z, y, x) spacing of every case, keyed by its first channel file."""
    from segtrt.io import discover_cases, read_image

    folder = model.folder
    cases = discover_cases(scans, folder.num_input_channels, folder.file_ending, folder.channel_names)
    images = {}
    for case in sorted(cases, key=lambda c: c.case_id):
        image, geometry = read_image(case.channels)
        images[Path(case.channels[0])] = (image, tuple(geometry.spacing))
    return images


def _patches(model: Any, args: argparse.Namespace, device: torch.device, images: dict) -> list[torch.Tensor]:
    folder = model.folder
    if not images:
        return random_patches(args.patches, folder.num_input_channels, folder.patch_size, batch=args.batch,
                              seed=args.seed, device=device)
    from segtrt.preprocess import PreprocessPlan, preprocess

    plan = PreprocessPlan.from_nnunet(folder.plans, folder.configuration)
    patches = []
    for image, spacing in images.values():
        pre = preprocess(torch.from_numpy(image).to(device), spacing, plan)
        single = scan_patches(pre.data, folder.patch_size, args.patches * args.batch, seed=args.seed)
        patches += [torch.cat(single[i:i + args.batch]) for i in range(0, len(single), args.batch)]
    return patches


def _compare_cases(model: Any, runners: list, args: argparse.Namespace, device: torch.device, images: dict,
                   min_agreement: float):
    """Whole-case label maps: the predictor with torch fp32 (TF32 off) vs with the runners under test."""
    from segtrt.predictor import Predictor
    from segtrt.runners.torch_runner import TorchRunner

    settings = PredictSettings(device=str(device), mirror=args.tta, batch_size=args.batch, precision=args.precision,
                               backend=args.backend)
    references = [TorchRunner(net, device, "fp32") for net in model.networks]
    with Predictor(model.folder, references, settings, model.mirror_axes, device) as reference, \
            Predictor(model.folder, runners, settings, model.mirror_axes, device) as candidate:

        def reference_labels(path: Path) -> np.ndarray:
            with exact_float32():
                return reference.predict_image(*images[path]).labels

        def candidate_labels(path: Path) -> np.ndarray:
            return candidate.predict_image(*images[path]).labels

        return compare_case_labels(reference_labels, candidate_labels, list(images), min_agreement=min_agreement,
                                   labels=model.folder.labels, label=f"{args.backend} {args.precision} vs torch fp32")
