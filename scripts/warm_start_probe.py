#!/usr/bin/env python
"""Where a second process's compiled warm start goes, on one GPU: imports, tracing, cache loads.

Each step runs in a fresh child process (a crash costs the step, not the run) and prints one JSON line:

1. ``imports``: seconds to import torch, then torch._dynamo, then torch._inductor.compile_fx (twice: the
   second run shows what bytecode caching gives), with ``-X importtime``'s slowest modules;
2. ``compile-cold`` / ``compile-warm``: segtrt's TorchRunner (fp16, ``--compile default``, channels-last,
   fp16 weight copy, and the runner's default ``precompile``, so precompiled where torch can) from model
   load to the first logits; the first warm child profiles its first call (cProfile's slowest functions
   and dynamo's own phase times);
3. ``precompile-save`` / ``precompile-load``: torch's experimental dynamo ahead-of-time compile of the same
   module (``OptimizedModule._aot_compile``), saved to a file, then loaded and called by a fresh process
   (no tracing), with its error against eager fp32;
4. ``aoti-*``: AOTInductor on a tiny Conv3d: load after CUDA is initialised, and the loader under gdb (a
   native backtrace of the crash seen with torch 2.11), when gdb is there.

    python scripts/warm_start_probe.py --out $OUT [--workload wholebody] [--batch 4] [--steps imports ...]

Needs a CUDA GPU. Writes ``warm_start_probe.json`` (and the profile) under ``--out``; prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORTS = r"""
import json, time
t = {}
s = time.perf_counter(); import torch; t["torch"] = time.perf_counter() - s
s = time.perf_counter(); import torch._dynamo; t["torch._dynamo"] = time.perf_counter() - s
s = time.perf_counter(); import torch._inductor.compile_fx; t["torch._inductor.compile_fx"] = time.perf_counter() - s
s = time.perf_counter(); import triton; t["triton"] = time.perf_counter() - s
s = time.perf_counter(); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t["cuda init"] = time.perf_counter() - s
print("RESULT " + json.dumps({k: round(v, 3) for k, v in t.items()}))
"""

NETWORK = r"""
import json, sys, time
T0 = time.perf_counter()
sys.path.insert(0, {root!r})
for name in ("SimpleITK", "nibabel"):
    try:
        __import__(name)
    except ImportError:
        import types; sys.modules[name] = types.ModuleType(name)
import torch
from scripts.bench_network import make_network
from segtrt.runners.torch_runner import TorchRunner
t_import = time.perf_counter() - T0
torch.manual_seed(1)
x = torch.randn(({batch}, 1, *{patch}), device="cuda")
torch.cuda.synchronize()
s = time.perf_counter()
net = make_network({workload!r}, torch.device("cuda"))
torch.cuda.synchronize()
t_load = time.perf_counter() - s
"""

COMPILE = NETWORK + r"""
s = time.perf_counter()
runner = TorchRunner(net, "cuda", "fp16", compile_mode="default", batch_size={batch})
runner.activate()
t_activate = time.perf_counter() - s
profile = {profile}
if profile:
    import cProfile, pstats, io
    prof = cProfile.Profile(); prof.enable()
s = time.perf_counter()
out = runner.infer(x); torch.cuda.synchronize()
t_first = time.perf_counter() - s
row = {{"import_s": round(t_import, 2), "model_load_s": round(t_load, 2), "activate_s": round(t_activate, 2),
       "first_call_s": round(t_first, 2), "load_to_first_logits_s": round(t_activate + t_first, 2),
       "describe": runner.describe()}}
if profile:
    prof.disable()
    buf = io.StringIO(); pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(45)
    row["profile"] = buf.getvalue()[-9000:]
    buf = io.StringIO(); pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    row["profile_self"] = buf.getvalue()[-5000:]
    try:
        from torch._dynamo.utils import compile_times
        row["dynamo_compile_times"] = compile_times(repr="str")[-3000:]
    except Exception as exc:
        row["dynamo_compile_times"] = repr(exc)
print("RESULT " + json.dumps(row))
"""

PRECOMPILE = NETWORK + r"""
import torch._dynamo
from torch._dynamo.aot_compile import ModelInput
torch._dynamo.config.enable_aot_compile = True
path = {path!r}
half = __import__("copy").deepcopy(net).half().eval().to(memory_format=torch.channels_last_3d)
with torch.inference_mode():  # the runner's batches are inference tensors
    xh = x.to(dtype=torch.float16, memory_format=torch.channels_last_3d)
s = time.perf_counter()
opt = torch.compile(half, mode="default", dynamic=False, fullgraph=True)
t_wrap = time.perf_counter() - s
mode = {mode!r}
if mode == "save":
    with torch.inference_mode():
        opt._aot_compile([ModelInput(args=(xh,), kwargs={{}}, contexts=[torch.inference_mode()])])
    data = opt._save_aot_compiled_module()
    open(path, "wb").write(data)
    what = {{"compile_and_save_s": round(time.perf_counter() - s, 2), "bytes": len(data)}}
else:
    import cProfile, pstats, io
    prof = cProfile.Profile(); prof.enable()
    opt._load_aot_compiled_module(open(path, "rb").read())
    t_loaded = time.perf_counter() - s
    # its guards were recorded in another grad mode than the call's (torch 2.11); shapes are static here
    for result in opt.forward.compiled_results:
        result.disable_guard_check()
    with torch.inference_mode():
        out = opt(xh); torch.cuda.synchronize()
    t_first = time.perf_counter() - s
    prof.disable()
    buf = io.StringIO(); pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
    print(buf.getvalue()[-6000:])
    with torch.inference_mode():
        ref = net(x)
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    import statistics
    times = []
    with torch.inference_mode():
        for _ in range(3): opt(xh)
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); opt(xh); b.record(); torch.cuda.synchronize(); times.append(a.elapsed_time(b))
    what = {{"wrap_s": round(t_wrap, 2), "load_s": round(t_loaded, 2), "load_to_first_logits_s": round(t_first, 2),
            "rel_err": err,
            "ms_per_patch": statistics.median(times) / {batch}}}
print("RESULT " + json.dumps({{"import_s": round(t_import, 2), "model_load_s": round(t_load, 2), **what}}))
"""

AOTI_TINY = r"""
import faulthandler, json, sys, time
faulthandler.enable()
import torch
path = {path!r}
if {compile!r}:
    from torch._inductor import aoti_compile_and_package
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.LeakyReLU(0.01),
                              torch.nn.Conv3d(8, 3, 1)).cuda().eval()
    x = torch.randn(2, 1, 32, 32, 32, device="cuda")
    with torch.no_grad():
        program = torch.export.export(net, (x,), strict=False)
    s = time.perf_counter()
    aoti_compile_and_package(program, package_path=path)
    print("RESULT " + json.dumps({{"compile_s": round(time.perf_counter() - s, 1)}}))
else:
    if {cuda_first!r}:
        torch.zeros(1, device="cuda"); torch.cuda.synchronize()
    from torch._inductor import aoti_load_package
    m = aoti_load_package(path)
    print("loaded", flush=True)
    y = m(torch.randn(2, 1, 32, 32, 32, device="cuda")); torch.cuda.synchronize()
    print("RESULT " + json.dumps({{"ran": list(y.shape)}}))
"""


def child(name: str, code: str, timeout: int, env: dict | None = None, argv: list[str] | None = None) -> dict:
    """Run ``code`` in a fresh python; its ``RESULT {json}`` line (or the exit and stderr tail)."""
    start = time.perf_counter()
    command = (argv or []) + [sys.executable, *([] if argv else ["-X", "faulthandler"]), "-c", code]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, cwd=ROOT)
    except subprocess.TimeoutExpired:
        row = {"step": name, "error": f"timed out after {timeout} s"}
        print(json.dumps(row), flush=True)
        return row
    row = {"step": name, "wall_s": round(time.perf_counter() - start, 2), "exit": done.returncode}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            row.update(json.loads(line[7:]))
    printed = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("RESULT "))
    if printed.strip():
        row["stdout_tail"] = printed[-6000:]
    if done.returncode != 0 or "RESULT" not in done.stdout:
        row["stderr_tail"] = done.stderr[-6000:]
    print(json.dumps({k: v for k, v in row.items() if k not in ("profile", "profile_self", "stdout_tail")}),
          flush=True)
    return row


def import_times(stderr: str, count: int = 15) -> list[tuple[int, str]]:
    """The slowest modules of ``-X importtime`` output by cumulative microseconds."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line[len("import time:"):].split("|")
            try:
                rows.append((int(parts[1]), parts[2].rstrip()))
            except ValueError:
                continue
    return sorted(rows, reverse=True)[:count]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workload", default="wholebody")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", nargs="+", default=["imports", "compile", "precompile", "aoti"])
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    patch = (128, 128, 128) if args.workload.startswith("wholebody") else (32, 32, 32)
    fill = {"root": str(ROOT), "batch": args.batch, "patch": patch, "workload": args.workload}
    rows: list[dict] = []
    if "imports" in args.steps:
        for run in (1, 2):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORTS], capture_output=True,
                                  text=True, timeout=300)
            row = {"step": f"imports run {run}", "wall_s": round(time.perf_counter() - start, 2)}
            for line in done.stdout.splitlines():
                if line.startswith("RESULT "):
                    row.update(json.loads(line[7:]))
            row["slowest"] = import_times(done.stderr)
            if done.returncode:
                row["stderr_tail"] = done.stderr[-2000:]
            print(json.dumps(row), flush=True)
            rows.append(row)
    if "compile" in args.steps:
        rows.append(child("compile-cold", COMPILE.format(**fill, profile=False), 900))
        rows.append(child("compile-warm", COMPILE.format(**fill, profile=True), 600))
        rows.append(child("compile-warm again", COMPILE.format(**fill, profile=False), 600))
    if "precompile" in args.steps:
        path = str(args.out / "precompiled.bin")
        rows.append(child("precompile-save", PRECOMPILE.format(**fill, path=path, mode="save"), 900))
        rows.append(child("precompile-load", PRECOMPILE.format(**fill, path=path, mode="load"), 600))
        rows.append(child("precompile-load again", PRECOMPILE.format(**fill, path=path, mode="load"), 600))
        Path(path).unlink(missing_ok=True)
    if "aoti" in args.steps:
        path = "/tmp/warm_probe_tiny.pt2"
        rows.append(child("aoti-compile tiny", AOTI_TINY.format(path=path, compile=True, cuda_first=False), 600))
        rows.append(child("aoti-load tiny, CUDA first", AOTI_TINY.format(path=path, compile=False, cuda_first=True),
                          300))
        gdb = shutil.which("gdb")
        if gdb:
            code = AOTI_TINY.format(path=path, compile=False, cuda_first=True)
            rows.append(child("aoti-load tiny under gdb", code, 300,
                              argv=[gdb, "-batch", "-ex", "run", "-ex", "bt 40", "--args"]))
        else:
            rows.append({"step": "aoti-load tiny under gdb", "error": "no gdb on this machine"})
    (args.out / "warm_start_probe.json").write_text(json.dumps(rows, indent=1))
    for row in rows:
        if "profile" in row:
            (args.out / "warm_start_profile.txt").write_text(row["profile"] + "\n\n" + row.get("profile_self", "")
                                                             + "\n\n" + str(row.get("dynamo_compile_times", "")))
    print("\nstep | wall s | key numbers")
    for row in rows:
        keys = [k for k in ("torch", "torch._dynamo", "torch._inductor.compile_fx", "triton", "cuda init", "import_s",
                            "model_load_s", "activate_s", "first_call_s", "load_to_first_logits_s", "load_s",
                            "compile_and_save_s", "rel_err", "ms_per_patch", "compile_s", "exit", "error")
                if k in row]
        print(f"{row['step']} | {row.get('wall_s', '-')} | " + ", ".join(f"{k}={row[k]}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
