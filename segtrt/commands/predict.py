"""``segtrt predict``: segment NIfTI/DICOM inputs with an nnU-Net v2 model folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segtrt.config import (
    ACCUMULATE_DTYPES,
    BACKENDS,
    COMPILE_MODES,
    DEFAULT_MODEL_DIR,
    NONFINITE_POLICIES,
    PRECISIONS,
    STREAM_MODES,
    PredictSettings,
    default_of,
)

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment images with an nnU-Net v2 model",
        description="Segment one case (one file, or one file per channel), a folder of nnU-Net style "
        "CASE_0000.nii.gz files, or DICOM series folders. Writes <case>.nii.gz label maps and a run report.",
        epilog="examples:\n"
        "  segtrt predict scan.nii.gz -m MODEL_FOLDER -o out/\n"
        "  segtrt predict cases/ -m MODEL_FOLDER -o out/ --backend onnxruntime --batch-size 2\n"
        "  segtrt predict dicom_series_folder/ -o out/ --device cpu --no-tta",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (created)")
    p.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL_DIR,
                   help="nnU-Net v2 model folder (default: the bundled sample model)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (default: all present)")
    p.add_argument("-c", "--configuration", default=None, help="configuration, e.g. 3d_fullres (default: the checkpoint's)")
    p.add_argument("--checkpoint", default=default_of("checkpoint_name"),
                   help="checkpoint file name in fold_K/ (default: %(default)s)")
    p.add_argument("--device", default=default_of("device"),
                   help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--backend", default=default_of("backend"), choices=BACKENDS, help="(default: %(default)s)")
    p.add_argument("--precision", default=default_of("precision"), choices=PRECISIONS, help="(default: %(default)s)")
    p.add_argument("--step-size", type=float, default=default_of("step_size"),
                   help="window step as a fraction of the patch, in (0, 1] (default: %(default)s)")
    p.add_argument("--no-tta", action="store_true", help="disable test-time mirroring")
    p.add_argument("--batch-size", type=int, default=default_of("batch_size"),
                   help="patches (and their mirror flips) per forward pass, >= 1; device memory grows with it "
                        "(default: %(default)s)")
    p.add_argument("--accumulate", default=default_of("accumulate_dtype"), choices=ACCUMULATE_DTYPES,
                   help="dtype of the logit accumulator on the device (default: %(default)s)")
    p.add_argument("--stream", default=default_of("stream"), choices=STREAM_MODES,
                   help="z-streamed aggregation: only a patch-tall slab of logits stays on the device and finished "
                        "slices go to host memory as float16, for volumes x classes too large for the GPU "
                        "(auto: on CUDA when whole-volume accumulators exceed 4 GiB; default: %(default)s)")
    p.add_argument("--compile", default=default_of("compile"), choices=tuple(COMPILE_MODES),
                   help="torch backend: compile the network (kernels cached on disk; the first run compiles, "
                        "max-autotune for minutes) (default: %(default)s)")
    p.add_argument("--nonfinite", default=default_of("nonfinite"), choices=NONFINITE_POLICIES,
                   help="NaN/Inf voxels in an input: error refuses the case (saying how many and where), zero "
                        "replaces them by 0 and records it in the report (default: %(default)s)")
    p.add_argument("--cuda-graph", action="store_true", help="torch backend: replay the network from CUDA graphs")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz probabilities")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints holding Python objects outside nnU-Net's allow-list (runs pickled code)")
    p.add_argument("--no-overlap-io", action="store_true",
                   help="read, predict and write each case strictly in sequence (default: read the next case and "
                        "write the previous one in background threads while a case is on the device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtrt.io.writers import check_output_folder
    from segtrt.run import run_prediction

    settings = PredictSettings(
        device=args.device,
        step_size=args.step_size,
        mirror=not args.no_tta,
        batch_size=args.batch_size,
        precision=args.precision,
        accumulate_dtype=args.accumulate,
        save_probabilities=args.save_probabilities,
        backend=args.backend,
        folds=tuple(args.folds) if args.folds else None,
        configuration=args.configuration,
        checkpoint_name=args.checkpoint,
        trust_checkpoint=args.trust_checkpoint,
        compile=args.compile,
        cuda_graph=args.cuda_graph,
        stream=args.stream,
        overlap_io=not args.no_overlap_io,
        nonfinite=args.nonfinite,
    )
    check_output_folder(args.output)
    show_progress = not args.no_progress and not args.quiet and sys.stderr.isatty()
    report = run_prediction(args.model, args.inputs, args.output, settings, progress_bar=show_progress)
    for case in report.cases:
        if case.ok:
            print(f"{case.case_id}: {case.output}  ({_seconds(case.seconds)})")
        else:
            print(f"{case.case_id}: FAILED: {case.error}", file=sys.stderr)
    print(f"report: {report.path}")
    failed = [c for c in report.cases if not c.ok]
    if failed:
        print(f"segtrt: {len(failed)} of {len(report.cases)} case(s) failed", file=sys.stderr)
        return 1
    return 0


def _seconds(seconds: dict[str, float]) -> str:
    total = sum(seconds.values())
    parts = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
    return f"{total:.2f} s: {parts}"
