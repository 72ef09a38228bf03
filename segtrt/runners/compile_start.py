"""Which ``torch.compile`` starts will find their kernels in inductor's disk cache (warm starts).

Inductor starts a pool of compile-worker processes (one per core, up to 32) in every process that
compiles, even when every kernel then comes from its disk cache; on an H200 machine with 16 cores that pool
cost a warm 10-case folder run 4.4 s of its 26.4 s (starting it, and shutting it down at exit).
segtrt records each network it has compiled (a small JSON file per key in ``<cache>/compiled/warm``);
a later process that finds the record compiles in-process (``compile_threads=1``), where a warm start
has nothing to compile. If the record is stale (inductor's cache was emptied), that start is a slow,
single-process compile: correct, logged as a warning, and the report says so.

The key is :func:`segtrt.runners.compiled_cache.key_fields` (weights by content, input shape, precision,
layout, mode, GPU, torch / CUDA / Triton versions) plus whether the weights were frozen and whether an
fp16 copy of them was compiled.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Sequence

import torch

from segtrt import config
from segtrt.engine.cache import cache_key
from segtrt.io.writers import atomic_write_bytes
from segtrt.runners.compiled_cache import key_fields, network_sha256


def marker_path(network: torch.nn.Module, shape: Sequence[int], precision: str, channels_last: bool, mode: str,
                freeze: bool, device: torch.device, root: str | Path | None = None,
                half_weights: bool = False) -> tuple[Path, dict]:
    """Where the record of compiling ``network`` for batches of ``shape`` lives, and its key fields."""
    fields = {**key_fields(network_sha256(network), shape, precision, channels_last, mode, device),
              "frozen_weights": bool(freeze), "purpose": "torch.compile"}
    if half_weights:  # (absent otherwise: records written before this option keep their keys)
        fields["weights"] = "fp16 copy"
    folder = Path(root) if root is not None else config.cache_dir() / "compiled" / "warm"
    return folder / f"{cache_key(fields)}.json", fields


def record_compiled(path: Path, fields: dict, seconds: float) -> None:
    """Write the record (atomically): this network was compiled into inductor's cache in ``seconds``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"fields": fields, "first_call_seconds": round(seconds, 3),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(path, json.dumps(body, indent=2, sort_keys=True).encode())
