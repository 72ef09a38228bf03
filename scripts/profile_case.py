#!/usr/bin/env python
"""Where a warm whole-case prediction leaves the GPU idle: a torch.profiler timeline of one case.

Builds a benchmark workload (scripts/benchmark.py's seeded random-weight model and synthetic CT), warms
the predictor up, then profiles one ``predict_image`` and prints: wall time, GPU busy time (union of
kernel and copy intervals), the largest idle gaps with the host call that was running at each, the
kernels that took the most time, and the segtrt stages' own seconds. Writes JSON (and, with --trace,
a gzipped Chrome trace for chrome://tracing or Perfetto).

    python scripts/profile_case.py --workload wholebody --variant fp16:4:compile --no-tta --out /tmp/prof
    python scripts/profile_case.py --workload tiny --device cpu --out /tmp/prof   # the CPU's op table only
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import WORKLOADS, Variant, synthetic_ct, write_model_folder  # noqa: E402

from segtrt.backends import create_runners  # noqa: E402
from segtrt.config import PredictSettings  # noqa: E402
from segtrt.nnunet import load_model  # noqa: E402
from segtrt.predictor import Predictor  # noqa: E402


def gpu_intervals(events) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every kernel, copy and memset the profiler saw on a GPU."""
    out = []
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out.append((e.time_range.start, e.time_range.end, e.name))
    return sorted(out)


def union_busy(intervals: list[tuple[float, float, str]]) -> float:
    """Microseconds during which at least one GPU interval ran."""
    busy, end = 0.0, float("-inf")
    for start, stop, _ in intervals:
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return busy


def idle_gaps(intervals: list[tuple[float, float, str]], begin: float, finish: float) -> list[tuple[float, float]]:
    """(start us, length us) of each stretch without GPU work between ``begin`` and ``finish``."""
    gaps, end = [], begin
    for start, stop, _ in intervals:
        if start > end:
            gaps.append((end, start - end))
        end = max(end, stop)
    if finish > end:
        gaps.append((end, finish - end))
    return gaps


def host_call_at(cpu_events, moment: float) -> str:
    """The innermost host op running at ``moment`` (with segtrt's own frames when the stack was kept)."""
    best = None
    for e in cpu_events:
        if e.time_range.start <= moment <= e.time_range.end:
            if best is None or e.time_range.start >= best.time_range.start:
                best = e
    if best is None:
        return "(no op: Python between calls)"
    frames = [f for f in (best.stack or []) if "segtrt" in f][:3]
    return best.name + ("  <- " + " <- ".join(frames) if frames else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="wholebody", choices=sorted(WORKLOADS))
    p.add_argument("--variant", default="fp16:4:compile", help="precision:batch[:path] as in scripts/benchmark.py")
    p.add_argument("--no-tta", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gaps", type=int, default=15, help="largest idle gaps to list")
    p.add_argument("--trace", action="store_true", help="also write trace.json.gz")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    w, variant, device = WORKLOADS[args.workload], Variant.parse(args.variant), torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="segtrt_profile_"))
    try:
        folder = write_model_folder(tmp / "model", w)
        image = synthetic_ct(w)
        settings = PredictSettings(device=str(device), mirror=not args.no_tta, precision=variant.precision,
                                   batch_size=variant.batch, compile=variant.compile,
                                   cuda_graph=variant.path in ("graph", "compile-graph"))
        model = load_model(folder, device=device)
        runners, _ = create_runners(model, settings, device)
        with Predictor(model.folder, runners, settings, model.mirror_axes, device) as predictor:
            for _ in range(args.warmup):
                predictor.predict_image(image, w.spacing)
            activities = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            with torch.profiler.profile(activities=activities, with_stack=True) as prof:
                started = time.perf_counter()
                prediction = predictor.predict_image(image, w.spacing)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                wall = time.perf_counter() - started
            runner = runners[0].describe()
        events = prof.events()
        cpu_events = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
        gpu = gpu_intervals(events)
        begin = min(e.time_range.start for e in cpu_events)
        finish = max([e.time_range.end for e in cpu_events] + [g[1] for g in gpu])
        span = finish - begin
        busy = union_busy(gpu)
        gaps = sorted(idle_gaps(gpu, begin, finish), key=lambda g: -g[1]) if gpu else []
        kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for start, stop, name in gpu:
            kernels[name[:90]][0] += stop - start
            kernels[name[:90]][1] += 1
        top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:15]
        result = {
            "workload": w.name, "variant": variant.label, "mirror": not args.no_tta, "device": str(device),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "date": time.strftime("%Y-%m-%d"),
            "wall_s": round(wall, 4), "profiled_span_s": round(span / 1e6, 4),
            "gpu_busy_s": round(busy / 1e6, 4), "gpu_busy_pct": round(100 * busy / span, 1) if span else None,
            "gpu_intervals": len(gpu), "idle_total_s": round(sum(g[1] for g in gaps) / 1e6, 4),
            "idle_gaps_over_1ms": sum(1 for g in gaps if g[1] > 1000),
            "idle_over_1ms_s": round(sum(g[1] for g in gaps if g[1] > 1000) / 1e6, 4),
            "largest_gaps": [{"at_ms": round((start - begin) / 1e3, 2), "ms": round(length / 1e3, 2),
                              "host": host_call_at(cpu_events, start + 1)} for start, length in gaps[: args.gaps]],
            "top_kernels": [{"name": name, "ms": round(t / 1e3, 2), "count": n} for name, (t, n) in top],
            "stage_seconds": {k: round(v, 4) for k, v in prediction.seconds.items()},
            "runner": runner,
        }
        (args.out / "profile_case.json").write_text(json.dumps(result, indent=1, default=str))
        if args.trace:
            trace = tmp / "trace.json"
            prof.export_chrome_trace(str(trace))
            with open(trace, "rb") as src, gzip.open(args.out / "trace.json.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_summary(result)
    return 0


def print_summary(r: dict) -> None:
    print(f"\n{r['gpu'] or r['device']}, {r['workload']}, {r['variant']}, mirror {r['mirror']}, {r['date']}")
    print(f"wall {r['wall_s']} s; profiled span {r['profiled_span_s']} s; GPU busy {r['gpu_busy_s']} s "
          f"({r['gpu_busy_pct']}%); idle {r['idle_total_s']} s, of it {r['idle_over_1ms_s']} s in "
          f"{r['idle_gaps_over_1ms']} gaps over 1 ms; stages {r['stage_seconds']}")
    print("\n| idle gap at ms | ms | host call running |\n| --- | --- | --- |")
    for g in r["largest_gaps"]:
        print(f"| {g['at_ms']} | {g['ms']} | {g['host'][:160]} |")
    print("\n| kernel | ms | count |\n| --- | --- | --- |")
    for k in r["top_kernels"]:
        print(f"| {k['name']} | {k['ms']} | {k['count']} |")


if __name__ == "__main__":
    sys.exit(main())
