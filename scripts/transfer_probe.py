#!/usr/bin/env python
"""How fast whole volumes move between host and GPU memory on this machine, each way segtrt could do it.

A warm whole-body case profiled on the H200 (scripts/profile_case.py, 2026-12-03) spent 261 ms in one
``np.copyto`` of a 315 MB float32 CT into the page-locked upload buffer (1.2 GB/s), while folder runs
upload 157 MB int16 CTs in 35 ms, and 58 ms copying a 79 MB label map to pageable memory. This probe
times, for a CT-sized int16 and float32 volume and a label map (medians of --repeats):

- host copies into an existing page-locked buffer and into ordinary memory, on 1 and on N threads
  (numpy releases the GIL for the copy, so chunks copy in parallel);
- host -> device from page-locked and from ordinary memory;
- device -> host into ordinary memory (``tensor.cpu()``) and through a page-locked buffer (segtrt's Downloader).

    python scripts/transfer_probe.py --out /tmp/probe                   # on a CUDA machine
    python scripts/transfer_probe.py --device cpu --scale 0.01 --out /tmp/probe   # host copies only (CI-sized)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segtrt.transfer import Downloader, host_copy  # noqa: E402

VOLUMES = {"ct int16": ((1, 300, 512, 512), np.int16), "ct float32": ((1, 300, 512, 512), np.float32),
           "labels uint8": ((300, 512, 512), np.uint8)}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm: page faults, first-touch, lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe(shape, dtype, device: torch.device, threads: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 100, size=shape).astype(dtype)
    nbytes = src.nbytes
    rows: dict[str, float] = {}
    plain = np.empty_like(src)
    rows["host copy -> ordinary, 1 thread"] = median_seconds(lambda: np.copyto(plain, src), repeats)
    with ThreadPoolExecutor(threads) as pool:
        rows[f"host copy -> ordinary, {threads} threads"] = median_seconds(
            lambda: host_copy(plain, src, threads, pool), repeats)
        if device.type == "cuda":
            pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            staging = pinned.numpy().view(dtype).reshape(shape)
            rows["host copy -> page-locked, 1 thread"] = median_seconds(lambda: np.copyto(staging, src), repeats)
            rows[f"host copy -> page-locked, {threads} threads"] = median_seconds(
                lambda: host_copy(staging, src, threads, pool), repeats)
    if device.type == "cuda":
        def upload(tensor):
            tensor.to(device, non_blocking=True)
            torch.cuda.synchronize(device)

        from_pinned = torch.from_numpy(staging)
        rows["host -> device from page-locked"] = median_seconds(lambda: upload(from_pinned), repeats)
        rows["host -> device from ordinary"] = median_seconds(lambda: upload(torch.from_numpy(src)), repeats)
        on_device = torch.from_numpy(src).to(device)
        downloader = Downloader(device)
        rows["device -> host, tensor.cpu()"] = median_seconds(lambda: on_device.cpu(), repeats)
        rows["device -> host, Downloader"] = median_seconds(lambda: downloader(on_device), repeats)
    return {"shape": list(shape), "dtype": np.dtype(dtype).name, "mb": round(nbytes / 1e6, 1),
            "seconds": {k: round(v, 5) for k, v in rows.items()},
            "gb_per_s": {k: round(nbytes / v / 1e9, 2) for k, v in rows.items() if v > 0}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of each volume's slices (small runs)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "volumes": {}}
    for name, (shape, dtype) in VOLUMES.items():
        shape = (*shape[:-3], max(1, int(shape[-3] * args.scale)), *shape[-2:])
        results["volumes"][name] = probe(shape, dtype, device, args.threads, args.repeats)
    (args.out / "transfer_probe.json").write_text(json.dumps(results, indent=1))
    print(f"\n{results['gpu'] or results['device']}, {results['date']} (median ms, GB/s)")
    print("| volume | MB | copy | ms | GB/s |\n| --- | --- | --- | --- | --- |")
    for name, r in results["volumes"].items():
        for row, seconds in r["seconds"].items():
            print(f"| {name} | {r['mb']} | {row} | {seconds * 1e3:.1f} | {r['gb_per_s'].get(row, '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
