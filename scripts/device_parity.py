#!/usr/bin/env python
"""Segment one case with every device/precision asked for and compare each with CPU fp32.

    python scripts/device_parity.py sample_data/example_ct.nii.gz --runs cpu:fp32 cuda:fp32 cuda:fp16

Prints seconds per case (median of --repeats after a warm-up) and, per run, voxel agreement and
Dice per label against the first run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segtrt.backends import create_runners  # noqa: E402
from segtrt.config import DEFAULT_MODEL_DIR, PredictSettings  # noqa: E402
from segtrt.devices import resolve_device  # noqa: E402
from segtrt.io import read_image  # noqa: E402
from segtrt.nnunet import load_model  # noqa: E402
from segtrt.predictor import Predictor  # noqa: E402


def segment(model_dir: Path, image, spacing, device_name: str, precision: str, mirror: bool, repeats: int):
    device, _ = resolve_device(device_name)
    settings = PredictSettings(device=device_name, precision=precision, mirror=mirror)
    model = load_model(model_dir, device=device)
    runners, _ = create_runners(model, settings, device)
    seconds = []
    with Predictor(model.folder, runners, settings, model.mirror_axes, device) as predictor:
        for rep in range(repeats + 1):
            start = time.perf_counter()
            labels = predictor.predict_image(image, spacing).labels
            if rep:
                seconds.append(time.perf_counter() - start)
    return labels, statistics.median(seconds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", type=Path, nargs="+")
    p.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--runs", nargs="+", default=["cpu:fp32", "cuda:fp32", "cuda:fp16"])
    p.add_argument("--no-tta", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    image, geometry = read_image(args.image)
    results = []
    for run in args.runs:
        device, precision = run.split(":")
        labels, secs = segment(args.model, image, geometry.spacing, device, precision, not args.no_tta, args.repeats)
        results.append((run, labels, secs))
    ref = results[0][1]
    print(f"\n{'run':12s} {'s/case':>8s} {'agree':>9s}  dice per label vs {results[0][0]}")
    for run, labels, secs in results:
        dice = {}
        for k in sorted(set(np.unique(ref)) - {0}):
            a, b = ref == k, labels == k
            dice[int(k)] = round(2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0), 5)
        print(f"{run:12s} {secs:8.3f} {float((labels == ref).mean()):9.6f}  {dice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
