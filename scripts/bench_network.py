#!/usr/bin/env python
"""Network-only timing on the GPU: ms per patch and effective TFLOP/s for several execution paths.

Each variant runs the same seeded network (nnU-Net's default CT U-Net for a 128^3 patch unless told
otherwise) on the same input: warm-up calls first (compilation and CUDA-graph capture timed apart),
then CUDA-event timings whose median is reported. Outputs of every variant are compared with eager
fp32 (max |diff| / max |logit|), so a fast path that changes the answer shows it.

    python scripts/bench_network.py --variants eager:fp32 eager:fp16 graph:fp16 compile:fp16 --batch 4

Variants are ``path:precision``: path is ``eager``, ``graph`` (CUDA graph of the eager network),
``compile`` (torch.compile, default mode) or ``autotune`` (torch.compile max-autotune without CUDA
graphs); precision is fp32 or fp16 (autocast). ``--cudnn-benchmark`` toggles cuDNN's autotuner.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchmark import WORKLOADS, architecture  # noqa: E402
from segtrt.nnunet.network import build_network  # noqa: E402
from segtrt.runners.torch_runner import TorchRunner  # noqa: E402


def make_network(workload: str, device: torch.device) -> torch.nn.Module:
    w = WORKLOADS[workload]
    torch.manual_seed(0)
    config = {"architecture": architecture(w), "patch_size": list(w.patch)}
    return build_network(config, 1, w.classes).to(device).eval()


def time_variant(net, x, path: str, precision: str, iters: int, device, cudnn_benchmark: bool) -> dict:
    runner = TorchRunner(net, device, precision, compile_mode={"eager": None, "graph": None, "compile": "default",
                                                               "autotune": "max-autotune-no-cudagraphs"}[path],
                         cuda_graph=path == "graph", batch_size=x.shape[0], cudnn_benchmark=cudnn_benchmark)
    runner.activate()
    t0 = time.perf_counter()
    out = runner.infer(x)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(3):
        out = runner.infer(x)
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = runner.infer(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    result = out.float().clone()
    runner.deactivate()
    return {"ms_per_call": statistics.median(times), "first_call_s": first, "out": result}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="wholebody", choices=sorted(WORKLOADS))
    p.add_argument("--variants", nargs="+", default=["eager:fp32", "eager:fp16", "graph:fp16", "compile:fp16"])
    p.add_argument("--batch", type=int, nargs="+", default=[4])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--cudnn-benchmark", choices=("on", "off", "both"), default="both")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = p.parse_args()
    device = torch.device("cuda")
    net = make_network(args.workload, device)
    w = WORKLOADS[args.workload]
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros((1, 1, *w.patch), device=device))
    gflop = counter.get_total_flops() / 1e9
    rows = []
    benchmarks = {"on": [True], "off": [False], "both": [False, True]}[args.cudnn_benchmark]
    for batch in args.batch:
        x = torch.randn((batch, 1, *w.patch), device=device, generator=torch.Generator(device).manual_seed(1))
        with torch.inference_mode():
            torch.backends.cudnn.benchmark = False
            reference = net(x).float()
        scale = float(reference.abs().max())
        for bench in benchmarks:
            for spec in args.variants:
                path, precision = spec.split(":")
                if path in ("compile", "autotune") and not bench and len(benchmarks) > 1:
                    continue  # compiled paths pick their own kernels; time them once
                try:
                    r = time_variant(net, x, path, precision, args.iters, device, bench)
                except Exception as exc:  # report and go on: one broken variant must not hide the others
                    rows.append({"variant": spec, "batch": batch, "cudnn_benchmark": bench, "error": repr(exc)[:300]})
                    print(f"{spec} b{batch}: {exc!r}", flush=True)
                    continue
                ms = r["ms_per_call"] / batch
                rows.append({"variant": spec, "batch": batch, "cudnn_benchmark": bench, "ms_per_patch": ms,
                             "tflops": gflop / ms, "first_call_s": r["first_call_s"],
                             "rel_err": float((r["out"] - reference).abs().max()) / scale})
                print(json.dumps(rows[-1]), flush=True)
                torch._dynamo.reset()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "workload": args.workload,
              "gflop_per_patch": gflop, "rows": rows}
    (args.out / f"bench_network_{args.workload}.json").write_text(json.dumps(result, indent=1))
    print(f"\nGPU: {result['gpu']}  workload {args.workload}  {gflop:.0f} GFLOP/patch")
    print(f"{'variant':16s} {'batch':>5s} {'cudnn.bm':>8s} {'ms/patch':>9s} {'TFLOP/s':>8s} {'first s':>8s} {'rel err':>9s}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:16s} {r['batch']:5d} {str(r['cudnn_benchmark']):>8s}  error: {r['error'][:60]}")
            continue
        print(f"{r['variant']:16s} {r['batch']:5d} {str(r['cudnn_benchmark']):>8s} {r['ms_per_patch']:9.2f} "
              f"{r['tflops']:8.0f} {r['first_call_s']:8.1f} {r['rel_err']:9.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
