"""``segtrt build MODEL_FOLDER``: compile a model's torch networks ahead of a prediction run.

``--compile aot`` (the default) writes one AOTInductor package per fold into segtrt's cache
(segtrt.runners.compiled_cache), which ``segtrt predict``'s default ``--compile auto`` then loads on this GPU
for the same ``--precision``, ``--batch-size``, ``--channels-last`` and ``--half-weights``;
``--compile default`` or ``max-autotune`` runs one batch through
``torch.compile`` so that inductor's disk cache holds the kernels and, where the runner precompiles
(segtrt.runners.precompiled), segtrt's cache the compiled module. Either way a later
``segtrt predict`` with the same model, ``--precision``, ``--batch-size``, ``--compile`` and
``--channels-last`` on this GPU starts warm.
"""

from __future__ import annotations

import argparse

from segtrt.config import AHEAD_OF_TIME, CHANNELS_LAST, COMPILE_MODES, HALF_WEIGHTS, PRECISIONS, PredictSettings
from segtrt.errors import SegtrtError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("torch networks (when the source is an nnU-Net model folder)")
    group.add_argument("--compile", default="aot", choices=[m for m in COMPILE_MODES if m != "off"],
                       help="aot / aot-max-autotune: AOTInductor packages in segtrt's cache (aot: what segtrt predict "
                            "--compile auto loads); default / max-autotune: fill torch.compile's disk cache "
                            "(default: %(default)s)")
    group.add_argument("--precision", default="fp32", choices=PRECISIONS, help="as segtrt predict will use it")
    group.add_argument("--batch-size", type=int, default=4, help="as segtrt predict will use it")
    group.add_argument("--channels-last", default="auto", choices=tuple(CHANNELS_LAST), help="as segtrt predict will use it")
    group.add_argument("--half-weights", default="auto", choices=tuple(HALF_WEIGHTS),
                       help="as segtrt predict will use it (auto: an fp16 weight copy for --precision fp16)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--folds", nargs="+", help="folds to compile (default: all in the folder)")
    group.add_argument("--configuration", help="configuration of plans.json (default: the checkpoint's)")
    group.add_argument("--trust-checkpoint", action="store_true", help="as for segtrt predict")
    group.add_argument("--rebuild", action="store_true", help="compile again even when a package is cached")


def run_model_folder(args: argparse.Namespace) -> int:
    """Compile every requested fold; prints one line per fold (path, cold or warm, seconds)."""
    import torch

    from segtrt.backends import torch_runner
    from segtrt.devices import resolve_device
    from segtrt.nnunet import load_model

    if args.batch_size < 1:
        raise SegtrtError(f"--batch-size must be at least 1, got {args.batch_size}")
    device, _ = resolve_device(args.device)
    settings = PredictSettings(device=args.device, batch_size=args.batch_size, precision=args.precision,
                               compile=args.compile, channels_last=args.channels_last,
                               half_weights=args.half_weights)
    model = load_model(args.onnx, configuration=args.configuration, folds=args.folds,
                       trust=args.trust_checkpoint, device=device)
    folder = model.folder
    shape = (args.batch_size, folder.num_input_channels, *folder.configuration["patch_size"])
    for fold, network in zip(folder.folds, model.networks):
        with torch_runner(network, settings, device) as runner:
            if args.compile in AHEAD_OF_TIME:
                info = runner.prepare(shape, rebuild=args.rebuild).describe()
                where = info["package"]
            else:
                with torch.inference_mode():  # as segtrt predict calls it
                    runner.infer(torch.randn(shape, device=device))
                info = runner.describe()["compiled"]
                where = ("inductor's disk cache" if "precompiled_file" not in info
                         else f"{info['precompiled_file']} in segtrt's cache (and inductor's disk cache)")
        print(f"fold {fold}: {runner.describe()['path']} {runner.describe()['layout']} {args.precision} batch "
              f"{list(shape)} -> {where} ({info['start']} start, {runner.first_call_seconds or info.get('seconds', 0):.1f} s)")
    return 0
