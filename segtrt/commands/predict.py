"""``segtrt predict``: segment files, folders, nested trees and DICOM exports with an nnU-Net v2 model.

Exit codes: 0 every case done (or done before and resumed), 1 some case failed (the others are
written and the report lists the reasons), 2 a usage error (one line, nothing predicted).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from segtrt.config import (
    ACCUMULATE_DTYPES,
    BACKENDS,
    CHANNELS_LAST,
    COMPILE_CHOICES,
    FREEZE,
    HALF_WEIGHTS,
    PRECOMPILE,
    DEFAULT_MODEL_DIR,
    NONFINITE_POLICIES,
    PRECISIONS,
    STREAM_MODES,
    WHILE_COMPILING,
    BatchSettings,
    PredictSettings,
    ScaleSettings,
)

log = logging.getLogger(__name__)

EPILOG = """examples:
  segtrt predict scan.nii.gz -m MODEL -o out/                 one file
  segtrt predict a.nii.gz b.nrrd c.mha -m MODEL -o out/       three cases
  segtrt predict /data/export -m MODEL -o out/ --recursive    a PACS export: every usable DICOM series and image
  segtrt predict /data/export -m MODEL -o out/ --recursive --series-description venous
a rerun into the same -o folder skips the cases already done (segtrt_manifest.jsonl); --overwrite recomputes.
exit codes: 0 all done, 1 some case failed (listed in OUT/segtrt_report.json), 2 usage error."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="segment images with an nnU-Net v2 model",
        description="Segment image files (NIfTI, NRRD, MetaImage), DICOM series, folders and nested trees of "
                    "them. Writes one label map per case, mirroring the input tree, a manifest (for resuming) "
                    "and a run report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="image files, DICOM series folders or folders of them")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (created)")
    p.add_argument("-m", "--model", type=Path, default=None,
                   help="nnU-Net v2 model folder (without it: the bundled demonstration model, with a warning)")
    _add_model_options(p)
    _add_batch_options(p)
    _add_scale_options(p)
    from segtrt.outputs import add_output_arguments

    add_output_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per case instead)")
    p.set_defaults(func=run)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    d = PredictSettings()
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (default: all present)")
    p.add_argument("-c", "--configuration", default=None, help="configuration, e.g. 3d_fullres (default: the checkpoint's)")
    p.add_argument("--checkpoint", default=d.checkpoint_name, help="checkpoint file name in fold_K/ (default: %(default)s)")
    p.add_argument("--device", default=d.device,
                   help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--backend", default=d.backend, choices=BACKENDS, help="(default: %(default)s)")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="(default: %(default)s)")
    p.add_argument("--step-size", type=float, default=d.step_size,
                   help="window step as a fraction of the patch, in (0, 1] (default: %(default)s)")
    p.add_argument("--no-tta", action="store_true", help="disable test-time mirroring")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="patches (and their mirror flips) per forward pass, >= 1; device memory grows with it "
                        "(default: %(default)s)")
    p.add_argument("--accumulate", default=d.accumulate_dtype, choices=ACCUMULATE_DTYPES,
                   help="dtype of the logit accumulator on the device (default: %(default)s)")
    p.add_argument("--stream", default=d.stream, choices=STREAM_MODES,
                   help="z-streamed aggregation: only a patch-tall slab of logits stays on the device and finished "
                        "slices go to host memory as float16 (auto: on CUDA when whole-volume accumulators exceed 4 GiB)")
    p.add_argument("--compile", default=d.compile, choices=COMPILE_CHOICES,
                   help="torch backend: auto = on CUDA the compiled packages `segtrt build MODEL_DIR` made, when "
                        "segtrt's cache has them for these settings, else eager; aot = those packages, compiled "
                        "now when missing (~90 s a fold); default / max-autotune = torch.compile (kernels cached on "
                        "disk); off = eager (default: %(default)s)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="torch backend: replay the network from CUDA graphs (with --compile: the compiled "
                        "network's kernels, captured after its first call)")
    p.add_argument("--channels-last", default=d.channels_last, choices=tuple(CHANNELS_LAST),
                   help="torch backend: weights and patches in channels_last_3d (auto: when compiling on CUDA)")
    p.add_argument("--freeze", default=d.freeze, choices=tuple(FREEZE),
                   help="torch backend: compile the weights in as constants (inductor freezing; auto: with --compile "
                        "default / max-autotune on CUDA, unless --half-weights)")
    p.add_argument("--half-weights", default=d.half_weights, choices=tuple(HALF_WEIGHTS),
                   help="torch backend, --precision fp16: run an fp16 copy of the weights instead of autocast "
                        "(auto: with --compile default / max-autotune on CUDA; with --compile aot only when on)")
    p.add_argument("--precompile", default=d.precompile, choices=tuple(PRECOMPILE),
                   help="torch backend: keep what torch.compile made in segtrt's cache, so later runs load it "
                        "without tracing the network again (auto: with --compile default / max-autotune on CUDA, "
                        "unless --freeze on)")
    p.add_argument("--nonfinite", default=d.nonfinite, choices=NONFINITE_POLICIES,
                   help="NaN/Inf voxels in an input: error refuses the case (saying how many and where), zero "
                        "replaces them by 0 and records it in the report (default: %(default)s)")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz probabilities")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints holding Python objects outside nnU-Net's allow-list (runs pickled code)")


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    b = BatchSettings()
    p.add_argument("-r", "--recursive", action="store_true",
                   help="walk nested folders (patient/study/series trees, PACS exports)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute every case, also those the output folder's manifest lists as done")
    p.add_argument("--io-workers", type=int, default=b.io_workers, metavar="N",
                   help="reader and writer threads each (default: a quarter of the cores, 1 to 4)")
    p.add_argument("--no-overlap-io", action="store_true",
                   help="read, predict and write each case strictly in sequence")
    p.add_argument("--while-compiling", default=b.while_compiling, choices=WHILE_COMPILING,
                   help="with --compile on one CUDA device: the first case waits for the compiled network (wait), or "
                        "the eager network predicts cases until it is ready (eager; measured no faster on an H200) "
                        "(default: %(default)s)")
    p.add_argument("--modality", default=b.modality,
                   help="DICOM series to use by Modality, e.g. CT, MR or 'any' (default: the model's channel)")
    p.add_argument("--series-description", default=b.series_description, metavar="REGEX",
                   help="use only DICOM series whose Series Description matches REGEX (case-insensitive)")
    p.add_argument("--min-slices", type=int, default=b.min_slices, help="fewest slices of a usable DICOM series")
    p.add_argument("--series-uid", action="append", default=[], metavar="UID",
                   help="use only the DICOM series with this Series Instance UID (repeatable)")


def _add_scale_options(p: argparse.ArgumentParser) -> None:
    s = ScaleSettings()
    g = p.add_argument_group("several GPUs and machines (segtrt.batch.multi_device, segtrt.scaleout)")
    g.add_argument("--devices", default=None, metavar="LIST",
                   help="one warm predictor per local device, sharing the cases: cuda:0,cuda:1,... or all "
                        "(cpu,cpu gives two CPU workers, for testing)")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: without ADDRESS a local cluster is started; with host:port (or auto) a running "
                        "cluster is joined (-o absolute; inputs, -o and -m on storage every node mounts at the same path)")
    g.add_argument("--ray-workers", type=int, default=s.ray_workers, metavar="N",
                   help="Ray actors (default: one per GPU in the cluster, times --ray-actors-per-gpu)")
    g.add_argument("--ray-cpu-only", action="store_true",
                   help="CPU actors (num_cpus=1, no GPU) instead of GPU actors; needs --ray-workers")
    g.add_argument("--ray-actors-per-gpu", type=int, default=s.actors_per_gpu, metavar="K",
                   help="actors sharing each GPU (num_gpus=1/K), so one actor's file IO overlaps another's network")
    g.add_argument("--ray-cases-per-actor", type=int, default=s.cases_per_actor, metavar="K",
                   help="cases each actor holds at once: one on its device while the others are read and written "
                        "(default: %(default)s)")
    g.add_argument("--retries", type=int, default=s.max_retries, metavar="N",
                   help="with --ray: tries again after a lost worker or an unexpected error before a case is "
                        "quarantined")


def scale_from_args(args: argparse.Namespace) -> ScaleSettings:
    from segtrt.errors import SegtrtError

    devices = ()
    if args.devices is not None:
        devices = tuple(part.strip() for part in args.devices.split(",") if part.strip())
        if not devices:
            raise SegtrtError(f"--devices must list devices, e.g. cuda:0,cuda:1 or all; got {args.devices!r}")
    return ScaleSettings(devices=devices, ray_address=args.ray, ray_workers=args.ray_workers,
                         ray_cpu_only=args.ray_cpu_only, actors_per_gpu=args.ray_actors_per_gpu,
                         max_retries=args.retries, cases_per_actor=args.ray_cases_per_actor)


def settings_from_args(args: argparse.Namespace) -> tuple[PredictSettings, BatchSettings]:
    settings = PredictSettings(
        device=args.device, step_size=args.step_size, mirror=not args.no_tta, batch_size=args.batch_size,
        precision=args.precision, accumulate_dtype=args.accumulate, save_probabilities=args.save_probabilities,
        backend=args.backend, folds=tuple(args.folds) if args.folds else None, configuration=args.configuration,
        checkpoint_name=args.checkpoint, trust_checkpoint=args.trust_checkpoint, compile=args.compile,
        cuda_graph=args.cuda_graph, stream=args.stream, overlap_io=not args.no_overlap_io,
        channels_last=args.channels_last, nonfinite=args.nonfinite, freeze=args.freeze,
        half_weights=args.half_weights, precompile=args.precompile,
    )
    batch = BatchSettings(
        recursive=args.recursive, overwrite=args.overwrite, io_workers=args.io_workers, modality=args.modality,
        series_description=args.series_description, min_slices=args.min_slices, series_uids=tuple(args.series_uid),
        while_compiling=args.while_compiling,
    )
    return settings, batch


def run(args: argparse.Namespace) -> int:
    if (args.compile not in ("off", "auto") and args.backend in ("auto", "torch") and args.devices is None
            and args.ray is None and os.environ.get("SEGTRT_IMPORT_PREFETCH") == "1"):  # opt-in: measured slower (import_prefetch)
        from segtrt.runners import import_prefetch  # the compile machinery, while the model and images load

        import_prefetch.start(cuda=args.device != "cpu")
    from segtrt.commands.progress import BatchProgress, print_summary
    from segtrt.io.writers import check_output_folder
    from segtrt.outputs import output_options_from_args
    from segtrt.spread import predict_batch

    settings, batch = settings_from_args(args)
    check_output_folder(args.output)
    scale = scale_from_args(args)
    outputs = output_options_from_args(args)
    model = args.model
    if model is None:
        model = DEFAULT_MODEL_DIR
        log.warning("no -m/--model given: using segtrt's bundled DEMONSTRATION model (%s; liver, spleen, kidneys, "
                    "stomach, trained on one small CT). It is not a clinical model: pass -m with your own "
                    "nnU-Net model folder for real scans.", model)
    quiet = bool(getattr(args, "quiet", False))
    progress = BatchProgress(bar=not args.no_progress and not quiet and sys.stderr.isatty(), quiet=quiet)
    try:
        report = predict_batch(model, args.inputs, args.output, settings, batch, listener=progress,
                               outputs=outputs, scale=scale)
    finally:
        progress.close()
    print_summary(report, quiet=quiet)
    return 1 if report.counts()["failed"] else 0
