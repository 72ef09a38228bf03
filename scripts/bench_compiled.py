#!/usr/bin/env python
"""Compiled network paths on one GPU: layout, ahead-of-time packages, warm starts, CUDA graphs.

One run, in this order (each later step is skipped once ``--budget-s`` of wall time is spent):

1. eager fp32 reference and eager fp16 (NCDHW), then TorchRunner's ``--compile default`` in NCDHW and in
   channels_last_3d (fp16; the channels-last one also replayed from a CUDA graph), and the profile's
   recipe outside the runner (``model.half()``, ``.to(channels_last_3d)``); each with its first-call
   seconds, median ms/patch over CUDA events and max |out - eager fp32| / max |eager fp32|;
2. fresh processes on the same caches (``--sub``, default ``compile-warm``): seconds from model load to
   the first batch of logits for ``torch.compile`` with inductor's disk cache, and with
   ``--sub aot-cold aot-warm`` for the ahead-of-time package (compile + probe, then load; ``aot-half-*``
   the same for the package of an fp16 weight copy; ``aot-fp32-*`` fp32 packages, channels-last and NCDHW);
3. unless ``--no-extra``: ResEnc-M (channels-last and NCDHW), batch 8 and batch 2.

    python scripts/bench_compiled.py --workload wholebody --batch 4 --out $OUT

Writes ``bench_compiled_<workload>.json`` (and the warm phase's JSON) under ``--out``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _name in ("SimpleITK", "nibabel"):  # scripts.benchmark imports segtrt's image IO; no image is read here
    try:
        __import__(_name)
    except ImportError:
        import types

        sys.modules[_name] = types.ModuleType(_name)

from scripts.bench_network import make_network  # noqa: E402
from scripts.benchmark import WORKLOADS  # noqa: E402
from segtrt.runners.torch_runner import TorchRunner, _CapturedGraph  # noqa: E402

REFERENCE = Path("/tmp/bench_compiled_reference.pt")


def timed(call, x: torch.Tensor, iters: int) -> float:
    """Median ms of ``call(x)`` over ``iters`` CUDA-event timings after 3 warm-up calls."""
    for _ in range(3):
        call(x)
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_err(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference).abs().max() / reference.abs().max())


def run_variant(name: str, net, x, reference, iters: int, graph: bool = False, **kwargs) -> dict:
    """Activate a TorchRunner, time its first call and its steady state, check it, deactivate it."""
    t0 = time.perf_counter()
    runner = TorchRunner(net, "cuda", batch_size=x.shape[0], **kwargs)
    runner.activate()
    out = runner.infer(x)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    print(f"{name}: first call {first:.2f} s", flush=True)
    row = {"variant": name, "batch": x.shape[0], "first_call_s": round(first, 2),
           "rel_err": rel_err(out, reference), "out_contiguous": out.is_contiguous(), "out_dtype": str(out.dtype),
           "ms_per_patch": timed(runner.infer, x, iters) / x.shape[0], "describe": runner.describe(),
           # whether the first call needed torch.compile's machinery (an ahead-of-time package should not)
           "compiler_imported": {name: name in sys.modules for name in ("torch._dynamo", "torch._inductor.compile_fx")}}
    if graph:  # a CUDA graph over the same runner's forward (input copy, network, output copy)
        try:
            captured = _CapturedGraph(runner._run, x)
            row["graph_ms_per_patch"] = timed(captured.replay, x, iters) / x.shape[0]
            row["graph_rel_err"] = rel_err(captured.replay(x), reference)
            del captured
        except Exception as exc:  # noqa: BLE001 - report and go on
            row["graph_error"] = repr(exc)[:300]
    runner.deactivate()
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return row


def cold_phase(args) -> list[dict]:
    start = time.perf_counter()
    w = WORKLOADS[args.workload]
    net = make_network(args.workload, torch.device("cuda"))
    x = torch.randn((args.batch, 1, *w.patch), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.inference_mode():
        torch.backends.cudnn.benchmark = False
        reference = net(x).float()
    torch.save({"x": x.cpu(), "reference": reference.cpu()}, REFERENCE)
    plan = [
        ("eager fp32 ncdhw", {"precision": "fp32"}, False),
        ("eager fp16 ncdhw", {"precision": "fp16"}, False),
        ("compile fp16 ncdhw", {"precision": "fp16", "compile_mode": "default", "channels_last": False,
                                "freeze": False, "half_weights": False}, False),
        ("compile fp16 cl", {"precision": "fp16", "compile_mode": "default", "freeze": False,
                             "half_weights": False}, True),
        # inductor's freezing: weights become constants (folded casts, convolution weight layouts chosen once)
        ("compile fp16 cl freezing", {"precision": "fp16", "compile_mode": "default", "freeze": True,
                                      "half_weights": False}, True),
        # an fp16 copy of the weights without autocast (the casts are gone without freezing)
        ("compile fp16 cl half", {"precision": "fp16", "compile_mode": "default", "freeze": False,
                                  "half_weights": True}, True),
        ("compile fp16 cl half frozen", {"precision": "fp16", "compile_mode": "default", "freeze": True,
                                         "half_weights": True}, True),
        # the runner's own CUDA graph over its compiled network (what --compile default --cuda-graph does)
        ("compile fp16 cl half + runner graph", {"precision": "fp16", "compile_mode": "default",
                                                 "half_weights": True, "cuda_graph": True}, False),
    ]
    plan = [v for v in plan if v[0] not in args.skip]
    rows = []
    for name, kwargs, graph in plan:
        if time.perf_counter() - start > args.budget_s:
            rows.append({"variant": name, "skipped": "budget"})
            continue
        rows.append(_guarded(name, lambda: run_variant(name, net, x, reference, args.iters, graph, **kwargs)))
        print(json.dumps(rows[-1]), flush=True)
    if "manual half cl" not in args.skip:
        rows.append(_guarded("manual half cl", lambda: manual_half(net, x, reference, args.iters)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def manual_half(net, x, reference, iters: int) -> dict:
    """The profile's recipe outside the runner: model.half(), weights and input via .to(channels_last_3d)."""
    import copy

    half = copy.deepcopy(net).half().to(memory_format=torch.channels_last_3d)
    xh = x.half().to(memory_format=torch.channels_last_3d)
    compiled = torch.compile(half, mode="default", dynamic=False, fullgraph=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = compiled(xh)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0

        def call(batch):
            return compiled(batch)

        ms = timed(call, xh, iters)
    torch._dynamo.reset()
    return {"variant": "manual half cl", "batch": x.shape[0], "first_call_s": round(first, 2),
            "rel_err": rel_err(out, reference), "ms_per_patch": ms / x.shape[0], "input_stride": list(xh.stride())}


SUBPHASES = {
    # a fresh process each (an AOTInductor crash must not take the other numbers with it)
    "aot-cold": [("aot fp16 cl cold", {"compile_mode": "default", "ahead_of_time": True}, False)],
    "compile-warm": [("compile fp16 cl warm cache", {"compile_mode": "default"}, False)],
    "compile-warm-frozen": [("compile fp16 cl frozen warm cache", {"compile_mode": "default", "freeze": True,
                                                                   "half_weights": False}, False)],
    "aot-warm": [("aot fp16 cl warm", {"compile_mode": "default", "ahead_of_time": True}, False)],
    "cl": [("compile fp16 cl", {"compile_mode": "default"}, True)],
    "aot-graph": [("aot fp16 cl + cuda graph", {"compile_mode": "default", "ahead_of_time": True}, True)],
    # the package of an fp16 weight copy (no autocast inside; float16 batches)
    "aot-half-cold": [("aot fp16 cl half cold", {"compile_mode": "default", "ahead_of_time": True,
                                                 "half_weights": True}, False)],
    "aot-half-warm": [("aot fp16 cl half warm", {"compile_mode": "default", "ahead_of_time": True,
                                                 "half_weights": True}, False)],
    "fp32": [("compile fp32 cl", {"compile_mode": "default", "precision": "fp32"}, False)],
    # fp32 packages (segtrt predict's default precision), in channels-last and in NCDHW
    "aot-fp32-cold": [("aot fp32 cl cold", {"compile_mode": "default", "ahead_of_time": True, "precision": "fp32"},
                       False)],
    "aot-fp32-warm": [("aot fp32 cl warm", {"compile_mode": "default", "ahead_of_time": True, "precision": "fp32"},
                       False)],
    "aot-fp32-ncdhw-cold": [("aot fp32 ncdhw cold", {"compile_mode": "default", "ahead_of_time": True,
                                                     "precision": "fp32", "channels_last": False}, False)],
    "aot-fp32-ncdhw-warm": [("aot fp32 ncdhw warm", {"compile_mode": "default", "ahead_of_time": True,
                                                     "precision": "fp32", "channels_last": False}, False)],
    # the same warm start with inductor compiling in this process (no pool of compile workers started)
    "compile-warm-t1": [("compile fp16 cl warm cache, 1 compile thread", {"compile_mode": "default"}, False)],
}
#: environment of a sub-phase's process
SUBPHASE_ENV = {"compile-warm-t1": {"TORCHINDUCTOR_COMPILE_THREADS": "1"}}


def aot_diagnosis(out: Path) -> list[dict]:
    """Why loading an AOTInductor package crashed: a tiny Conv3d package, compiled here, loaded and run
    in a child with faulthandler on (its whole stderr kept), plus the C++ compiler inductor used."""
    import shutil as _shutil

    rows = []
    compiler = _shutil.which("g++") or _shutil.which("c++")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1] if compiler else []
    for name, fp16, shape in [("aot tiny conv fp32", False, (2, 1, 32, 32, 32)), ("aot tiny conv fp16", True, (2, 1, 32, 32, 32))]:
        t0 = time.perf_counter()
        try:
            from torch._inductor import aoti_compile_and_package

            net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.InstanceNorm3d(8, affine=True),
                                      torch.nn.LeakyReLU(0.01), torch.nn.Conv3d(8, 3, 1)).cuda().eval()
            from segtrt.runners.compiled_cache import Forward

            example = torch.randn(shape, device="cuda")
            with torch.no_grad():
                program = torch.export.export(Forward(net, "fp16" if fp16 else "fp32").eval(), (example,), strict=False)
            path = Path("/tmp") / f"{name.replace(' ', '_')}.pt2"
            aoti_compile_and_package(program, package_path=str(path))
            compiled = time.perf_counter() - t0
            child = ("import faulthandler, sys, torch; faulthandler.enable(); from torch._inductor import aoti_load_package; "
                     f"m = aoti_load_package({str(path)!r}); print('loaded', flush=True); "
                     f"x = torch.randn({shape!r}, device='cuda'); y = m(x); torch.cuda.synchronize(); print('ran', y.shape)")
            done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", child], capture_output=True, text=True,
                                  timeout=300)
            rows.append({"variant": name, "compile_s": round(compiled, 1), "child_exit": done.returncode,
                         "stdout": done.stdout[-500:], "stderr": done.stderr[-3000:], "compiler": version})
        except Exception as exc:  # noqa: BLE001 - a diagnosis reports
            rows.append({"variant": name, "error": repr(exc)[:1000], "compiler": version})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def sub_phase(args) -> list[dict]:
    """A fresh process: model load, then the first batch through each variant of ``SUBPHASES[args.phase]``."""
    import faulthandler

    faulthandler.enable()
    saved = torch.load(REFERENCE)
    rows = []
    for name, kwargs, graph in SUBPHASES[args.phase]:
        kwargs = {"precision": "fp16", **kwargs}
        t0 = time.perf_counter()
        net = make_network(args.workload, torch.device("cuda"))  # "model load": weights on the GPU
        x = saved["x"].cuda()
        torch.cuda.synchronize()
        loaded = time.perf_counter() - t0
        print(f"{name}: model loaded in {loaded:.2f} s", flush=True)
        row = _guarded(name, lambda: run_variant(name, net, x, saved["reference"].cuda(), args.iters, graph, **kwargs))
        row["model_load_s"] = round(loaded, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def extra_phase(args, elapsed: float) -> list[dict]:
    rows = []
    start = time.perf_counter()
    for workload, batch in [("wholebody_resenc", args.batch), (args.workload, 8), (args.workload, 2)]:
        name = f"compile fp16 cl {workload} b{batch}"
        if elapsed + time.perf_counter() - start > args.budget_s:
            rows.append({"variant": name, "skipped": "budget"})
            continue
        w = WORKLOADS[workload]
        net = make_network(workload, torch.device("cuda"))
        x = torch.randn((batch, 1, *w.patch), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        with torch.inference_mode():
            reference = net(x).float()
        rows.append(_guarded(name, lambda: run_variant(name, net, x, reference, args.iters, False,
                                                       precision="fp16", compile_mode="default")))
        if workload != args.workload:
            print(json.dumps(rows[-1]), flush=True)
            other = name.replace(" cl ", " ncdhw ")
            rows.append(_guarded(other, lambda: run_variant(other, net, x, reference, args.iters, False,
                                                            precision="fp16", compile_mode="default",
                                                            channels_last=False)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _guarded(name: str, call) -> dict:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - one broken variant must not hide the others
        print(f"{name}: {exc!r}", flush=True)
        return {"variant": name, "error": repr(exc)[:500]}


def table(rows: list[dict]) -> str:
    lines = [f"{'variant':40s} {'batch':>5s} {'ms/patch':>9s} {'graph ms':>9s} {'first s':>8s} {'load s':>7s} "
             f"{'rel err':>9s}"]
    for r in rows:
        if "ms_per_patch" not in r:
            lines.append(f"{r['variant']:40s} {r.get('error', r.get('skipped', ''))[:80]}")
            continue
        graph = r.get("graph_ms_per_patch")
        lines.append(f"{r['variant']:40s} {r['batch']:5d} {r['ms_per_patch']:9.2f} "
                     f"{'' if graph is None else f'{graph:.2f}':>9s} {r['first_call_s']:8.2f} "
                     f"{r.get('model_load_s', ''):>7} {r['rel_err']:9.2e}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="wholebody", choices=sorted(WORKLOADS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=360.0, help="skip the optional steps past this wall time")
    p.add_argument("--phase", choices=("all", *SUBPHASES), default="all")
    p.add_argument("--skip", nargs="*", default=[], help="main-process variants to leave out")
    p.add_argument("--sub", nargs="*", default=["compile-warm"], choices=list(SUBPHASES), help="fresh-process phases to run, in order")
    p.add_argument("--no-extra", action="store_true", help="skip step 3")
    p.add_argument("--aot-diagnosis", action="store_true", help="compile and load a tiny AOTInductor package first")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase != "all":
        rows = sub_phase(args)
        (args.out / f"bench_compiled_{args.phase}.json").write_text(json.dumps(rows, indent=1))
        return 0
    start = time.perf_counter()
    rows = aot_diagnosis(args.out) if args.aot_diagnosis else []
    rows += cold_phase(args)
    for phase in args.sub:
        if phase in ("aot-graph", "fp32") and time.perf_counter() - start > args.budget_s:
            rows.append({"variant": phase, "skipped": "budget"})
            continue
        cmd = [sys.executable, __file__, "--phase", phase, "--workload", args.workload, "--batch", str(args.batch),
               "--iters", str(args.iters), "--out", str(args.out)]
        code = subprocess.run(cmd, check=False, env={**os.environ, **SUBPHASE_ENV.get(phase, {})}).returncode
        result = args.out / f"bench_compiled_{phase}.json"
        rows += json.loads(result.read_text()) if result.is_file() else [
            {"variant": phase, "error": f"process ended with {code} before writing its result"}]
    if not args.no_extra:
        rows += extra_phase(args, time.perf_counter() - start)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "workload": args.workload,
              "seconds": round(time.perf_counter() - start, 1), "rows": rows}
    (args.out / f"bench_compiled_{args.workload}.json").write_text(json.dumps(result, indent=1))
    print(f"\nGPU: {result['gpu']}  torch {result['torch']}  workload {args.workload}  {result['seconds']} s")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
