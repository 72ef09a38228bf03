"""Precompiled networks: the result of ``torch.compile`` saved in segtrt's cache, so that a later
process calls it without tracing the network again.

With inductor's disk cache alone, every process still traces the network (dynamo's bytecode tracing,
AOTAutograd's cache key, guards) before its kernels come from the cache: on an H200 machine
(2026-12-02, torch 2.11, nnU-Net's CT U-Net, 128^3, batch 4, fp16) a warm first call took 4.4-6.6 s.
torch (>= 2.10) can save what ``torch.compile`` made (dynamo's ahead-of-time compile, experimental in
torch: ``OptimizedModule._aot_compile`` / ``_save_aot_compiled_module`` / ``_load_aot_compiled_module``);
loading it there took 3.4 s and its first call 0.2-1.4 s, with the same kernels (same error against
eager fp32, same ms/patch); through segtrt's TorchRunner a second process's first call took 2.5 s. AOTInductor packages (segtrt.runners.compiled_cache) would do the same, but
loading one crashed that machine's torch.

One entry per (network weights, input shape, dtype and strides, precision, layout, mode, device, torch /
CUDA / Triton versions, weight copy)::

    <cache_dir>/compiled/precompiled/<key>.bin     the saved compiled module
    <key>.json                                     what it was made from, its sha256 and size
    <key>.lock                                     builders of the same entry wait on it

The payload is written atomically before its metadata, so metadata means complete; a payload whose
sha256 differs from its metadata, or that fails to load, is rebuilt (logged, and said in the result).
Like inductor's own cache, an entry holds code that runs when it is loaded: the cache folder must be
writable by its user only.

The saved module is called with the network as its first argument, so it always uses the weights of
the module it is loaded for. Its guards are not checked (torch 2.11 recorded them in another grad mode
than the call's and refused every call); instead :class:`PrecompiledForward` checks that every input
has the shape, dtype, strides and device it was compiled for, and compiles (or loads) another entry for
an input that does not. A saved module holds its kernels: it loads with inductor's disk cache emptied.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch

from segtrt import config
from segtrt.engine.cache import cache_key
from segtrt.errors import one_line  # noqa: F401 - also this module's name for it (torch_runner, tests)
from segtrt.io.hashing import file_sha256
from segtrt.io.locking import file_lock
from segtrt.io.writers import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = 1


def unavailable_reason() -> str | None:
    """Why this torch cannot save a compiled module (None when it can)."""
    try:
        import torch._dynamo
        from torch._dynamo.aot_compile import ModelInput  # noqa: F401
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError as exc:
        return f"torch {torch.__version__} has no dynamo ahead-of-time compile ({exc})"
    missing = [name for name in ("_aot_compile", "_save_aot_compiled_module", "_load_aot_compiled_module")
               if not hasattr(OptimizedModule, name)]
    if missing or not hasattr(torch._dynamo.config, "enable_aot_compile"):
        absent = ", ".join(missing) or "enable_aot_compile"
        return f"torch {torch.__version__} cannot save compiled modules (no {absent})"
    return None


def input_signature(batch: torch.Tensor) -> dict:
    """What a saved module was compiled for: the input's shape, dtype, strides, device (with its index:
    inductor's code names the device it was compiled on) and whether it is an inference tensor (a module
    compiled in this process guards on that: an inference tensor lacks the ADInplaceOrView dispatch key)."""
    return {"shape": [int(s) for s in batch.shape], "dtype": str(batch.dtype).removeprefix("torch."),
            "stride": [int(s) for s in batch.stride()], "device": str(batch.device),
            "inference": bool(batch.is_inference())}


@dataclass(frozen=True)
class Entry:
    """Where one precompiled module lives."""

    payload: Path

    @property
    def metadata(self) -> Path:
        return self.payload.with_suffix(".json")

    @property
    def lock(self) -> Path:
        return self.payload.with_suffix(".lock")


def entry_for(fields: dict, root: str | Path | None = None) -> Entry:
    folder = Path(root) if root is not None else config.cache_dir() / "compiled" / "precompiled"
    return Entry(folder / f"{cache_key(fields)}.bin")


@dataclass
class Loaded:
    """A precompiled module ready to call, and how it was obtained (for the run report)."""

    call: Callable[[torch.Tensor], torch.Tensor]
    signature: dict
    path: Path
    how: str  # "loaded" (warm) or "compiled" (cold: traced, compiled and saved now)
    seconds: float
    note: str | None = None  # why an entry was rebuilt

    def describe(self) -> dict:
        info = {"precompiled": self.how, "precompiled_seconds": round(self.seconds, 3),
                "precompiled_file": self.path.name}
        if self.note:
            info["precompiled_note"] = self.note
        return info


def load_or_compile(module: torch.nn.Module, example: torch.Tensor, fields: dict, mode: str,
                    context: Callable[[], ContextManager] = contextlib.nullcontext,
                    inductor_options: dict | None = None, root: str | Path | None = None) -> Loaded:
    """The precompiled ``module`` for inputs like ``example``: loaded from the cache, else compiled and saved.

    fields: the key fields of the network and settings (segtrt.runners.compile_start); the input's
    signature is added. context: makes the context the module runs in (e.g. autocast), entered while
    compiling; the caller enters it around every call. Call it, and the result, inside
    ``torch.inference_mode()`` (the module is compiled for inference tensors). Raises whatever torch raises when it cannot compile or save.
    """
    signature = input_signature(example)
    fields = {**fields, "purpose": "dynamo precompile", "precompile_format": FORMAT, "forward_input": signature}
    entry = entry_for(fields, root)
    start = time.perf_counter()
    with file_lock(entry.lock):
        note = None
        if entry.payload.is_file() and entry.metadata.is_file():
            try:
                call = _InProcessFirstCall(_load(module, entry, fields, mode))
                log.info("precompiled network %s loaded in %.1f s", entry.payload.name, time.perf_counter() - start)
                return Loaded(call, signature, entry.payload, "loaded", time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - a damaged or stale entry is rebuilt, and said so
                note = f"rebuilt: the cached entry could not be used ({one_line(exc)})"
                log.warning("precompiled network %s could not be used (%s); compiling it again", entry.payload.name,
                            one_line(exc))
        call = _compile_and_save(module, example, entry, fields, mode, context, inductor_options or {})
    seconds = time.perf_counter() - start
    log.info("precompiled network %s compiled and saved in %.1f s", entry.payload.name, seconds)
    return Loaded(call, signature, entry.payload, "compiled", seconds, note)


def _optimized(module: torch.nn.Module, mode: str):
    return torch.compile(module, mode=mode, dynamic=False, fullgraph=True)


def _compile_and_save(module, example, entry: Entry, fields: dict, mode: str, context, inductor_options: dict):
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from torch._dynamo.aot_compile import ModelInput

    start = time.perf_counter()
    optimized = _optimized(module, mode)
    with torch._dynamo.config.patch(enable_aot_compile=True), inductor_config.patch(inductor_options):
        optimized._aot_compile([ModelInput(args=(example,), kwargs={}, contexts=[torch.inference_mode(), context()])])
        data = optimized._save_aot_compiled_module()
    seconds = time.perf_counter() - start
    entry.payload.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(entry.payload, data)
    metadata = {"key": entry.payload.stem, "fields": fields, "sha256": file_sha256(entry.payload),
                "bytes": len(data), "compile_seconds": round(seconds, 3),
                "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(entry.metadata, json.dumps(metadata, indent=2, sort_keys=True).encode())
    return optimized


def _load(module, entry: Entry, fields: dict, mode: str):
    import torch._dynamo

    metadata = json.loads(entry.metadata.read_text())
    if metadata.get("fields") != fields:
        raise ValueError("its metadata names other settings than its key")
    if file_sha256(entry.payload) != metadata.get("sha256"):
        raise ValueError("its sha256 differs from its metadata (changed or truncated)")
    optimized = _optimized(module, mode)
    with torch._dynamo.config.patch(enable_aot_compile=True), without_compile_workers():
        optimized._load_aot_compiled_module(entry.payload.read_bytes())
    for compiled in optimized.forward.compiled_results:
        compiled.disable_guard_check()  # see the module docstring: PrecompiledForward checks inputs instead
    return optimized


def without_compile_workers() -> ContextManager:
    """inductor set to compile in this process (``compile_threads`` 1) while a saved module loads.

    Loading a saved module's kernels asks inductor whether its pool of compile workers is ready, and the
    first ask starts it: a side process and one worker per core, each importing torch, while the batch's
    readers and writers need the cores. The load compiles nothing (its kernels are saved), so the pool is
    never used, but at exit inductor's exit handler waits for it to finish starting up before shutting it
    down: on the H200 machine (2026-12-03, torch 2.11) 8.9-10.6 s of exit handlers after a warm 4-case run,
    against none when the run had compiled. A cold compile (``_compile_and_save``) keeps the pool.
    """
    import torch._inductor.config as inductor_config

    return inductor_config.patch(compile_threads=1)


class _InProcessFirstCall:
    """A loaded module whose first call (where kernels may still be loaded) runs without compile workers."""

    def __init__(self, call: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._call, self._called = call, False

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self._called:
            return self._call(batch)
        with without_compile_workers():
            out = self._call(batch)
        self._called = True
        return out


class PrecompiledForward:
    """Calls the precompiled module made for each input's signature; makes one (``load``) for a new signature.

    load: ``example -> Loaded``. Every input is looked up by its signature (the saved modules' own guards
    are off), so no module sees an input it was not compiled for.
    """

    def __init__(self, load: Callable[[torch.Tensor], Loaded]) -> None:
        self._load = load
        self.modules: dict[tuple, Loaded] = {}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.get(batch).call(batch)

    def get(self, batch: torch.Tensor) -> Loaded:
        key = (tuple(batch.shape), batch.dtype, batch.stride(), batch.device, batch.is_inference())  # cheaply
        loaded = self.modules.get(key)
        if loaded is None:
            loaded = self.modules[key] = self._load(batch)
        return loaded
