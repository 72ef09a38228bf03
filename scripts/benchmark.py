#!/usr/bin/env python
"""End-to-end and per-stage timing: nnU-Net v2's predictor vs segtrt, same GPU, weights and scan.

One run times, for each workload and mirroring setting: nnU-Net v2 (preprocess / network / export,
as ../shared/tools/nnunet_anchor.py measures it, file IO excluded) and every segtrt variant asked
for (preprocess / network / export), plus network-only ms per patch with CUDA events and the
effective TFLOP/s. Medians over --repeats after one warm-up. Prints a table last and writes JSON.

    python scripts/benchmark.py --workload wholebody --out /tmp/bench

Weights are random (seeded); agreement with nnU-Net's labels is still reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segtrt.backends import create_runners  # noqa: E402
from segtrt.config import COMPILE_MODES, PredictSettings  # noqa: E402
from segtrt.nnunet import load_model  # noqa: E402
from segtrt.predictor import Predictor  # noqa: E402


@dataclass(frozen=True)
class Workload:
    name: str
    shape: tuple[int, int, int]          # CT voxels (z, y, x)
    spacing: tuple[float, float, float]  # CT spacing mm (z, y, x)
    target: tuple[float, float, float]   # model spacing mm
    patch: tuple[int, int, int]
    classes: int
    arch: str = "plain"                  # plain | resenc_m
    strides: tuple = ((1, 1, 1),) + ((2, 2, 2),) * 5
    features: tuple = (32, 64, 128, 256, 320, 320)


WORKLOADS = {
    "seed": Workload("seed", (298, 512, 512), (1.0, 0.8, 0.8), (1.0, 0.8, 0.8), (96, 160, 160), 2,
                     strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))),
    "wholebody": Workload("wholebody", (300, 512, 512), (1.5, 0.78, 0.78), (1.5, 1.5, 1.5), (128, 128, 128), 3),
    "wholebody_resenc": Workload("wholebody_resenc", (300, 512, 512), (1.5, 0.78, 0.78), (1.5, 1.5, 1.5),
                                 (128, 128, 128), 3, arch="resenc_m"),
    "tiny": Workload("tiny", (40, 64, 64), (1.5, 0.78, 0.78), (1.5, 1.5, 1.5), (32, 32, 32), 3,
                     strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), features=(8, 16, 32)),
    "memory": Workload("memory", (600, 512, 512), (1.5, 0.78, 0.78), (1.5, 1.5, 1.5), (128, 128, 128), 117),
}


def architecture(w: Workload) -> dict:
    n = len(w.features)
    common = {
        "n_stages": n, "features_per_stage": list(w.features), "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * n, "strides": [list(s) for s in w.strides], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if w.arch == "resenc_m":
        name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        common.update(n_blocks_per_stage=[1, 3, 4, 6, 6, 6][:n], n_conv_per_stage_decoder=[1] * (n - 1))
    else:
        name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
        common.update(n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1))
    return {"network_class_name": name, "arch_kwargs": common,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def write_model_folder(root: Path, w: Workload) -> Path:
    """An nnU-Net v2 model folder (plans, dataset, fold_0 checkpoint) with seeded random weights."""
    from segtrt.nnunet.network import build_network

    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(w.patch), "median_image_size_in_voxels": list(w.shape), "spacing": list(w.target),
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling, "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1}, "batch_dice": False,
        "architecture": architecture(w),
    }
    plans = {
        "dataset_name": "Dataset999_Bench", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
        "original_median_spacing_after_transp": list(w.target), "original_median_shape_after_transp": list(w.shape),
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager", "configurations": {"3d_fullres": config},
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3000.0, "mean": 100.0, "median": 90.0, "min": -1000.0, "percentile_00_5": -950.0,
            "percentile_99_5": 1500.0, "std": 300.0}},
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{f"c{i}": i for i in range(1, w.classes)}},
               "numTraining": 1, "file_ending": ".nii.gz"}
    folder = root / w.name
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    torch.manual_seed(0)
    net = build_network(config, 1, w.classes)
    checkpoint = {"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                  "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def synthetic_ct(w: Workload) -> np.ndarray:
    """(1, Z, Y, X) float32 HU: body ellipse, a bright organ, noise (as the anchor script builds it)."""
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: w.shape[0], : w.shape[1], : w.shape[2]]
    body = ((y - w.shape[1] / 2) / (w.shape[1] * 0.42)) ** 2 + ((x - w.shape[2] / 2) / (w.shape[2] * 0.45)) ** 2 < 1
    img = np.broadcast_to(np.where(body, 40, -1000), w.shape).astype(np.float32)
    img[:, : w.shape[1] // 3, w.shape[2] // 3 : w.shape[2] // 2] = 120
    img += rng.normal(0, 20, size=w.shape).astype(np.float32)
    return img.astype(np.int16).astype(np.float32)[None]


@dataclass
class Row:
    pipeline: str
    mirror: bool
    seconds: dict = field(default_factory=dict)
    agreement: float | None = None
    dice: dict | None = None
    peak_gb: float | None = None
    reserved_gb: float | None = None
    first_call_s: float | None = None
    streamed: bool | None = None
    error: str | None = None  # e.g. out of memory under --memory-limit-gb: the row is kept, the run goes on

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def run_nnunet(folder: Path, image: np.ndarray, w: Workload, mirror: bool, device,
               repeats: int = 1) -> tuple[Row, np.ndarray]:
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror, perform_everything_on_device=True,
                           device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    pm, cm = pred.plans_manager, pred.configuration_manager
    props = {"spacing": list(w.spacing)}
    row = Row("nnU-Net v2", mirror)
    # warm-up on one window (CUDA context, cuDNN autotuning of the patch shape), then timed runs
    pred.predict_logits_from_preprocessed_data(torch.zeros((1, *w.patch)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ppa = PreprocessAdapterFromNpy([image], [None], [props], [None], pm, pred.dataset_json, cm, num_threads_in_multithreaded=1)
        dct = next(ppa)
        t1 = time.perf_counter()
        logits = pred.predict_logits_from_preprocessed_data(dct["data"]).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, pm, cm, pm.get_label_manager(pred.dataset_json), dct["data_properties"])
        t3 = time.perf_counter()
        times.append((t1 - t0, t2 - t1, t3 - t2))
    t0, t1, t2, t3 = 0.0, *np.cumsum([statistics.median(column) for column in zip(*times)])
    row.seconds = {"preprocess": t1 - t0, "network": t2 - t1, "export": t3 - t2}
    return row, seg


def run_segtrt(folder: Path, image: np.ndarray, w: Workload, mirror: bool, variant: "Variant",
               repeats: int, accumulate: str, reference: np.ndarray | None, device: torch.device,
               stream: str = "auto") -> Row:
    settings = PredictSettings(device=str(device), mirror=mirror, precision=variant.precision,
                               batch_size=variant.batch, accumulate_dtype=accumulate, compile=variant.compile,
                               cuda_graph=variant.path in ("graph", "compile-graph"), **({"stream": stream} if stream != "auto" else {}))
    model = load_model(folder, device=device)
    runners, _ = create_runners(model, settings, device)
    row = Row(f"segtrt {variant.label}", mirror)
    runs = []
    with Predictor(model.folder, runners, settings, model.mirror_axes, device) as predictor:
        for rep in range(repeats + 1):
            if device.type == "cuda" and rep == 1:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            prediction = predictor.predict_image(image, w.spacing)
            if rep:
                runs.append(prediction.seconds)
        row.first_call_s = runners[0].describe().get("first_call_seconds")
        row.streamed = prediction.aggregation.streamed if prediction.aggregation else None
    row.seconds = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    if device.type == "cuda":
        row.peak_gb = torch.cuda.max_memory_allocated() / 2**30
        row.reserved_gb = torch.cuda.max_memory_reserved() / 2**30
    if reference is not None:
        row.agreement = float((prediction.labels == reference).mean())
        row.dice = dice_per_label(prediction.labels, reference, w.classes)
    del predictor, runners, model
    torch._dynamo.reset()
    return row


def dice_per_label(labels: np.ndarray, reference: np.ndarray, classes: int) -> dict[int, float]:
    """Dice of each foreground label against nnU-Net's labels (labels absent from both are left out)."""
    out = {}
    for label in range(1, classes):
        a, b = labels == label, reference == label
        total = int(a.sum()) + int(b.sum())
        if total:
            out[label] = 2.0 * int((a & b).sum()) / total
    return out


@dataclass(frozen=True)
class Variant:
    """One segtrt configuration: ``precision:batch[:path]``, path eager | compile | autotune | graph |
    compile-graph (compiled, replayed from a CUDA graph)."""

    precision: str
    batch: int
    path: str = "eager"

    @classmethod
    def parse(cls, spec: str) -> "Variant":
        parts = spec.split(":")
        return cls(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "eager")

    @property
    def compile(self) -> str:
        """The --compile value (segtrt.config.COMPILE_MODES maps it to torch's mode)."""
        return {"compile": "default", "compile-graph": "default", "autotune": "max-autotune"}.get(self.path, "off")

    @property
    def label(self) -> str:
        return f"torch {self.precision} b{self.batch}" + ("" if self.path == "eager" else f" {self.path}")


def network_ms_per_patch(folder: Path, w: Workload, variant: Variant, device: torch.device) -> dict:
    """Network alone through segtrt's torch runner: CUDA-event median ms per patch, effective TFLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    from segtrt.runners.torch_runner import TorchRunner

    entry = {"variant": variant.label, "precision": variant.precision, "batch": variant.batch}
    if device.type != "cuda":
        return {**entry, "ms_per_patch": float("nan"), "gflop_per_patch": float("nan"), "tflops": float("nan")}
    net = load_model(folder, device=device).networks[0].to(device).eval()
    x = torch.randn((variant.batch, 1, *w.patch), device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x[:1])
    flops = counter.get_total_flops()
    compile_mode = COMPILE_MODES[variant.compile]
    runner = TorchRunner(net, device, variant.precision, compile_mode=compile_mode,
                         cuda_graph=variant.path in ("graph", "compile-graph"), batch_size=variant.batch)
    with runner:
        for _ in range(3):
            runner.infer(x)
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            runner.infer(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / variant.batch)
    torch._dynamo.reset()
    ms = statistics.median(times)
    return {**entry, "ms_per_patch": ms, "gflop_per_patch": flops / 1e9, "tflops": flops / (ms * 1e-3) / 1e12,
            "first_call_s": runner.first_call_seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", nargs="+", default=["wholebody"], choices=sorted(WORKLOADS))
    p.add_argument("--mirror", default="both", choices=("both", "on", "off"))
    p.add_argument("--variants", nargs="+", default=["fp16:4", "fp16:4:compile", "fp32:4"],
                   help="precision:batch[:path] for segtrt torch; path eager (default), compile, autotune, graph, "
                        "compile-graph")
    p.add_argument("--stream", default="auto", choices=("auto", "on", "off"), help="segtrt --stream")
    p.add_argument("--accumulate", default="float32", choices=("float32", "float16"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-nnunet", action="store_true")
    p.add_argument("--nnunet-repeats", type=int, default=1, help="timed nnU-Net runs (median) after a one-window warm-up")
    p.add_argument("--device", default="cuda")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="cap this process's CUDA memory (torch.cuda.set_per_process_memory_fraction), as on a smaller GPU")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    p.add_argument("--log-debug", nargs="*", default=[], metavar="LOGGER", help="loggers to show at DEBUG (e.g. segtrt.transfer)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in args.log_debug:
        logging.getLogger(name).setLevel(logging.DEBUG)
    mirrors = {"both": [False, True], "on": [True], "off": [False]}[args.mirror]
    device = torch.device(args.device)
    if args.memory_limit_gb is not None:
        if device.type != "cuda":
            p.error("--memory-limit-gb caps CUDA memory: use it with a CUDA --device")
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(args.memory_limit_gb * 2**30 / total,
                                                  device.index if device.index is not None else torch.cuda.current_device())
    results = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "memory_limit_gb": args.memory_limit_gb, "argv": sys.argv[1:], "workloads": {}}
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workload:
            w = WORKLOADS[name]
            folder = write_model_folder(Path(tmp), w)
            image = synthetic_ct(w)
            entry = {"workload": w.__dict__, "rows": [], "network": []}
            variants = [Variant.parse(spec) for spec in args.variants]
            for variant in variants:
                entry["network"].append(network_ms_per_patch(folder, w, variant, device))
                print(entry["network"][-1], flush=True)
            for mirror in mirrors:
                reference = None
                if not args.skip_nnunet:
                    row, reference = run_nnunet(folder, image, w, mirror, device, args.nnunet_repeats)
                    print(row, flush=True)
                    entry["rows"].append(row)
                for variant in variants:
                    # segtrt gets the CT as its reader returns it (int16); nnU-Net's reader returns float32
                    try:
                        row = run_segtrt(folder, image.astype(np.int16), w, mirror, variant, args.repeats,
                                         args.accumulate, reference, device, args.stream)
                    except torch.OutOfMemoryError as exc:
                        limit = f" under the {args.memory_limit_gb} GB cap" if args.memory_limit_gb else ""
                        row = Row(f"segtrt {variant.label}", mirror, error=f"out of memory{limit}: {exc}".split("\n")[0])
                        torch._dynamo.reset()
                    entry["rows"].append(row)
                    print(entry["rows"][-1], flush=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            table.append((name, entry))
            results["workloads"][name] = {**entry, "rows": [r.__dict__ | {"total": r.total} for r in entry["rows"]]}
            # written after every workload, so a run cut short keeps what it measured
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "benchmark.json").write_text(json.dumps(results, indent=1, default=str))
    print_table(results["gpu"], table)
    return 0


def print_table(gpu: str, table) -> None:
    print(f"\nGPU: {gpu}")
    for name, entry in table:
        print(f"\n== {name}  (network only)")
        for n in entry["network"]:
            print(f"  {n['variant']}: {n['ms_per_patch']:.2f} ms/patch, "
                  f"{n['gflop_per_patch']:.0f} GFLOP/patch, {n['tflops']:.0f} TFLOP/s")
        print(f"{'pipeline':30s} {'tta':>3s} {'pre s':>7s} {'net s':>7s} {'export s':>8s} {'total s':>8s} "
              f"{'speedup':>8s} {'agree':>8s} {'min Dice':>8s} {'peak GB':>8s} {'resv GB':>8s} {'stream':>6s}")
        base = {r.mirror: r.total for r in entry["rows"] if r.pipeline.startswith("nnU-Net") and not r.error}
        for r in entry["rows"]:
            if r.error:
                print(f"{r.pipeline:30s} {int(r.mirror):3d} {r.error[:100]}")
                continue
            s = r.seconds
            speed = f"{base[r.mirror] / r.total:7.1f}x" if r.mirror in base else "      -"
            agree = f"{r.agreement:8.5f}" if r.agreement is not None else "       -"
            dice = f"{min(r.dice.values()):8.5f}" if r.dice else "       -"
            peak = f"{r.peak_gb:8.2f}" if r.peak_gb is not None else "       -"
            resv = f"{r.reserved_gb:8.2f}" if r.reserved_gb is not None else "       -"
            streamed = {True: "yes", False: "no", None: "-"}[r.streamed]
            pre = s.get("upload", 0) + s.get("preprocess", 0)
            print(f"{r.pipeline:30s} {int(r.mirror):3d} {pre:7.2f} {s.get('network', 0):7.2f} "
                  f"{s.get('export', 0):8.2f} {r.total:8.2f} {speed:>8s} {agree} {dice} {peak} {resv} {streamed:>6s}")


if __name__ == "__main__":
    sys.exit(main())
