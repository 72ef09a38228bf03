#!/usr/bin/env python
"""The job users run: a folder of CTs, file IO and process start included, nnU-Net's CLI vs segtrt.

Writes N synthetic whole-body CTs (int16 .nii.gz, each with its own noise), a model folder with seeded
random weights (scripts/benchmark.py's workloads), then runs as subprocesses, one after another:
``nnUNetv2_predict_from_modelfolder`` (its defaults: 3 preprocessing + 3 export processes) and
``segtrt predict FOLDER`` twice — cold (empty kernel caches) and warm (caches from the cold run, a new
output folder: a hospital's second batch). GPU utilisation is sampled with nvidia-smi every 100 ms.
Prints a table last and writes JSON (per-case stage seconds and the scheduler's timeline included).

    python scripts/folder_benchmark.py --workload wholebody --cases 20 --tta off on --out /tmp/fb \
        --segtrt-args="--precision fp16 --compile default"
    python scripts/folder_benchmark.py --workload tiny --cases 2 --device cpu --out /tmp/fb   # CI-sized
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import WORKLOADS, Workload, synthetic_ct, write_model_folder  # noqa: E402


def write_cases(folder: Path, w: Workload, count: int, threads: int) -> list[Path]:
    """``count`` CTs named nnU-Net's way (case_000_0000.nii.gz), each the workload's CT plus its own noise."""
    folder.mkdir(parents=True, exist_ok=True)
    base = synthetic_ct(w)[0]
    spacing = tuple(float(s) for s in reversed(w.spacing))

    def write(index: int) -> Path:
        rng = np.random.default_rng(index + 1)
        noise = rng.integers(-15, 16, size=base.shape, dtype=np.int16)
        image = sitk.GetImageFromArray((base.astype(np.int16) + noise))
        image.SetSpacing(spacing)
        path = folder / f"case_{index:03d}_0000.nii.gz"
        sitk.WriteImage(image, str(path), True)
        return path

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(write, range(count)))


class GpuSampler:
    """nvidia-smi utilisation samples (epoch seconds, percent) while a command runs; None without a GPU."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.process = None
        if shutil.which("nvidia-smi") is None:
            return
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.samples.append((time.time(), float(line.strip().split(",")[0])))
            except ValueError:
                continue

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()

    def busy(self, start: float, end: float) -> float | None:
        window = [u for t, u in self.samples if start <= t <= end]
        return round(float(np.mean(window)), 1) if window else None


def timed(command: list[str], env: dict, log: Path) -> dict:
    """Run ``command``; wall seconds, GPU busy % over the run, exit code; output kept in ``log``."""
    sampler = GpuSampler()
    start = time.time()
    with log.open("w") as handle:
        code = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    end = time.time()
    sampler.stop()
    return {"command": shlex.join(command), "exit_code": code, "wall_s": round(end - start, 2),
            "start": start, "end": end, "gpu_busy_pct": sampler.busy(start, end), "_sampler": sampler}


def nnunet_run(cases: Path, out: Path, model: Path, tta: bool, device: str, log: Path) -> dict:
    command = _nnunet_command() + ["-i", str(cases), "-o", str(out), "-m", str(model),
               "-f", "0", "-device", "cuda" if device.startswith("cuda") else device]
    if not tta:
        command.append("--disable_tta")
    return timed(command, dict(os.environ), log)


def _nnunet_command() -> list[str]:
    """nnU-Net's console script, or its entry point through scripts/nnunet_cli.py where the script is not
    installed (wheels unpacked on the GPU machine)."""
    if shutil.which("nnUNetv2_predict_from_modelfolder"):
        return ["nnUNetv2_predict_from_modelfolder"]
    return [sys.executable, str(Path(__file__).resolve().parent / "nnunet_cli.py")]


def segtrt_run(cases: Path, out: Path, model: Path, tta: bool, device: str, extra: list[str], cache: Path,
               log: Path, env_extra: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "SEGTRT_CACHE_DIR": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
           **(env_extra or {})}
    command = [sys.executable, "-m", "segtrt.cli", "predict", str(cases), "-o", str(out), "-m", str(model),
               "--device", device, "--no-progress", *extra] + ([] if tta else ["--no-tta"])
    result = timed(command, env, log)
    report = json.loads((out / "segtrt_report.json").read_text())
    sampler = result["_sampler"]
    done = [c for c in report["cases"] if c["status"] == "done"]
    io = report.get("io", {})
    first_written = _first_written(io)
    if first_written is not None:
        result["gpu_busy_after_first_pct"] = sampler.busy(first_written, result["end"])
    predicts = sorted((begin, end) for _, step, _, begin, end in io.get("timeline") or [] if step == "predict")
    if len(predicts) > 1:  # from the second case's prediction to the last one's end: the device loop itself
        result["gpu_busy_device_loop_pct"] = sampler.busy(io["started_epoch"] + predicts[1][0],
                                                          io["started_epoch"] + predicts[-1][1])
    stages = {}
    for case in done:
        for stage, seconds in case["seconds"].items():
            stages.setdefault(stage, []).append(seconds)
    result.update(startup=report.get("startup"), waited=io.get("waited_seconds"),
                  workers={k: io.get(k) for k in ("read_workers", "read_ahead", "write_workers")},
                  stage_mean_s={k: round(float(np.mean(v)), 3) for k, v in stages.items()},
                  stage_median_s={k: round(float(np.median(v)), 3) for k, v in stages.items()},
                  first_case_s={k: round(v, 3) for k, v in done[0]["seconds"].items()} if done else None,
                  cases_done=len(done), timeline=io.get("timeline"), runner=report.get("backend", {}).get("runner"),
                  while_compiling=report.get("backend", {}).get("while_compiling"),
                  phases=phases(result, report, predicts))
    return result


def build_run(model: Path, device: str, extra: list[str], cache: Path, log: Path) -> dict:
    """``segtrt build MODEL`` into the benchmark's cache: wall seconds, exit code, what it printed per fold."""
    env = {**os.environ, "SEGTRT_CACHE_DIR": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    command = [sys.executable, "-m", "segtrt.cli", "build", str(model), "--device", device, *extra]
    result = timed(command, env, log)
    result.pop("_sampler", None)
    result["folds"] = [line for line in log.read_text().splitlines() if line.startswith("fold ")]
    return result


def phases(result: dict, report: dict, predicts: list[tuple[float, float]]) -> dict:
    """Where a run's wall time went: process start to the job (interpreter, imports), the job's start to
    the first case's prediction (discovery, model load, runner activation; reads overlap it), the first
    case's prediction (a compiled network's warm start), the device loop (second to last case), the
    writes after the last prediction, and the process's exit after the report's last write."""
    io, begun, ended = report.get("io", {}), report.get("started_epoch"), report.get("finished_epoch")
    if not predicts or begun is None or ended is None or io.get("started_epoch") is None:
        return {}
    first, last = io["started_epoch"] + predicts[0][0], io["started_epoch"] + predicts[-1][1]
    return {"process_to_job_s": round(begun - result["start"], 2), "job_to_first_predict_s": round(first - begun, 2),
            "first_predict_s": round(predicts[0][1] - predicts[0][0], 2),
            "device_loop_s": round(predicts[-1][1] - predicts[1][0], 2) if len(predicts) > 1 else None,
            "device_loop_s_per_case": round((predicts[-1][1] - predicts[1][0]) / (len(predicts) - 1), 3)
            if len(predicts) > 1 else None,
            "tail_writes_s": round(ended - last, 2), "exit_s": round(result["end"] - ended, 2)}


def _first_written(io: dict) -> float | None:
    timeline, started = io.get("timeline"), io.get("started_epoch")
    if not timeline or started is None:
        return None
    writes = [end for _, step, _, _, end in timeline if step == "write"]
    return started + min(writes) if writes else None


def compare(reference: Path, candidate: Path, classes: int) -> dict:
    """Voxel agreement and the smallest foreground Dice over every case both tools wrote."""
    agreements, dices = [], []
    for path in sorted(reference.glob("*.nii.gz")):
        other = candidate / path.name
        if not other.is_file():
            continue
        a, b = sitk.GetArrayFromImage(sitk.ReadImage(str(path))), sitk.GetArrayFromImage(sitk.ReadImage(str(other)))
        agreements.append(float(np.mean(a == b)))
        for label in range(1, classes):
            total = int(np.sum(a == label) + np.sum(b == label))
            if total:
                dices.append(2 * float(np.sum((a == label) & (b == label))) / total)
    return {"cases": len(agreements), "agreement_min": round(min(agreements), 6) if agreements else None,
            "agreement_mean": round(float(np.mean(agreements)), 6) if agreements else None,
            "dice_min": round(min(dices), 4) if dices else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="wholebody", choices=sorted(WORKLOADS))
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--tta", nargs="+", default=["off"], choices=("off", "on"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--segtrt-args", default="", help="extra segtrt predict options, e.g. '--precision fp16'")
    p.add_argument("--skip-nnunet", action="store_true")
    p.add_argument("--no-cold", action="store_true", help="skip the cold segtrt run (caches given by --cache)")
    p.add_argument("--cache", type=Path, default=None, help="segtrt cache folder (default: OUT/cache, empty)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=8, help="threads writing the synthetic CTs")
    p.add_argument("--build", action="append", default=[], metavar="ARGS",
                   help="run `segtrt build MODEL ARGS` (timed) after the cold run, before the warm one: the "
                        "packages that segtrt predict's default --compile auto loads (e.g. --build='--precision fp16'; "
                        "repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="'NAME|ENV=V ...|ARGS'",
                   help="an extra warm segtrt run with these environment variables and extra options (repeatable)")
    args = p.parse_args()
    w = WORKLOADS[args.workload]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cases = args.out / "cases"
    if not cases.is_dir() or len(list(cases.glob("*.nii.gz"))) != args.cases:
        shutil.rmtree(cases, ignore_errors=True)
        write_cases(cases, w, args.cases, args.threads)
    model = write_model_folder(args.out / "model", w)
    print(f"wrote {args.cases} cases and the model in {time.perf_counter() - started:.1f} s", flush=True)
    results = {"workload": args.workload, "cases": args.cases, "device": args.device, "gpu": _gpu_name(),
               "date": time.strftime("%Y-%m-%d"), "segtrt_args": args.segtrt_args, "runs": []}
    extra = shlex.split(args.segtrt_args)
    cache = args.cache or args.out / "cache"
    for tta in [t == "on" for t in args.tta]:
        tag = "tta_on" if tta else "tta_off"
        reference: list[dict] = []

        def record(name: str, run: dict) -> None:
            """Add a finished run to the results and rewrite the JSON (a run cut short keeps the earlier ones)."""
            run.pop("_sampler", None)
            run.update(tool=name, tta=tta, s_per_case=round(run["wall_s"] / args.cases, 3))
            if name == "nnU-Net CLI":
                reference.append(run)
            elif reference:
                run["vs_nnunet"] = round(reference[0]["wall_s"] / run["wall_s"], 2)
                run["labels"] = compare(args.out / f"nnunet_{tag}", args.out / f"segtrt_{name.split()[1]}_{tag}",
                                        w.classes)
            results["runs"].append(run)
            (args.out / "folder_benchmark.json").write_text(json.dumps(results, indent=1, default=str))

        if not args.skip_nnunet:
            record("nnU-Net CLI", nnunet_run(cases, args.out / f"nnunet_{tag}", model, tta, args.device,
                                             args.out / f"nnunet_{tag}.log"))
        if not args.no_cold:
            shutil.rmtree(cache, ignore_errors=True)
            record("segtrt cold", segtrt_run(cases, args.out / f"segtrt_cold_{tag}", model, tta, args.device,
                                             extra, cache, args.out / f"segtrt_cold_{tag}.log"))
        if args.build and "builds" not in results:  # once: the packages stay in the cache
            results["builds"] = [build_run(model, args.device, shlex.split(more), cache, args.out / f"build_{i}.log")
                                 for i, more in enumerate(args.build)]
            for built in results["builds"]:
                print(f"segtrt build: {built['wall_s']} s (exit {built['exit_code']})", flush=True)
        record("segtrt warm", segtrt_run(cases, args.out / f"segtrt_warm_{tag}", model, tta, args.device,
                                         extra, cache, args.out / f"segtrt_warm_{tag}.log"))
        for variant in args.variant:
            name, env_text, more = (variant.split("|") + ["", ""])[:3]
            env_extra = dict(item.split("=", 1) for item in env_text.split())
            record(f"segtrt {name}", segtrt_run(cases, args.out / f"segtrt_{name}_{tag}", model, tta, args.device,
                                                extra + shlex.split(more), cache,
                                                args.out / f"segtrt_{name}_{tag}.log", env_extra))
    print_table(results)
    return 0 if all(r["exit_code"] == 0 for r in results["runs"]) else 1


def print_table(results: dict) -> None:
    print(f"\n{results['gpu'] or results['device']}, {results['cases']} x {results['workload']}, "
          f"{results['date']}, segtrt {results['segtrt_args']!r}")
    for built in results.get("builds", []):
        print(f"{built['command'].split(' build ')[-1]}: {built['wall_s']} s, exit {built['exit_code']}: "
              + "; ".join(built["folds"]))
    print("| tool | TTA | wall s | s/case | vs nnU-Net | GPU busy % (all / after 1st / device loop) | read s | write s "
          "| waited read/write s | agreement min | Dice min | exit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["runs"]:
        stages = r.get("stage_median_s") or {}
        waited = r.get("waited") or {}
        labels = r.get("labels") or {}
        print(f"| {r['tool']} | {'on' if r['tta'] else 'off'} | {r['wall_s']} | {r['s_per_case']} | "
              f"{r.get('vs_nnunet', '')} | {r.get('gpu_busy_pct')} / {r.get('gpu_busy_after_first_pct', '')} / "
              f"{r.get('gpu_busy_device_loop_pct', '')} | "
              f"{stages.get('read', '')} | {stages.get('write', '')} | {waited.get('read', '')} / "
              f"{waited.get('write', '')} | {labels.get('agreement_min', '')} | {labels.get('dice_min', '')} | "
              f"{r['exit_code']} |")
    print("\n| tool | TTA | process->job s | job->1st predict s | 1st predict s | device loop s (per case) | "
          "tail writes s | exit s | runner first call | while compiling |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["runs"]:
        ph, runner = r.get("phases") or {}, r.get("runner") or {}
        if not ph:
            continue
        start = (runner.get("compiled") or {}).get("start", "")
        print(f"| {r['tool']} | {'on' if r['tta'] else 'off'} | {ph['process_to_job_s']} | "
              f"{ph['job_to_first_predict_s']} | {ph['first_predict_s']} | {ph['device_loop_s']} "
              f"({ph['device_loop_s_per_case']}) | {ph['tail_writes_s']} | {ph['exit_s']} | "
              f"{runner.get('path', '')} {runner.get('activate_seconds', '')} {runner.get('first_call_seconds', '')} "
              f"{start} |"
              f"{_while_compiling(r.get('while_compiling'))} |")


def _while_compiling(entry: dict | None) -> str:
    """The report's ``backend.while_compiling`` in a few words: eager cases, when the compiled net was ready."""
    if not entry:
        return ""
    if entry.get("mode") == "wait":
        return f"wait ({entry.get('reason')})"
    return (f"{len(entry.get('eager_cases', []))} eager, {entry.get('compiled_cases')} compiled, ready after "
            f"{entry.get('ready_after_seconds')} s ({entry.get('compiled')}), waited at end "
            f"{entry.get('waited_at_end_seconds')} s")


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - only a label for the table
        return None


if __name__ == "__main__":
    sys.exit(main())
