"""Importing torch.compile's machinery on a background thread while a compiled run starts.

A compiled run imports ``torch._dynamo`` and inductor before its first call: on the H200 image
(2026-12-02, torch 2.11) 3.9 s for ``torch._dynamo`` and 2.9 s more for ``torch._inductor.compile_fx``,
the largest part of a warm start. Nothing in the run needs them until the runner compiles (or loads a
precompiled module), so ``segtrt predict`` / ``build`` start these imports on a daemon thread as soon as
they know the run compiles, and the main thread meanwhile loads the model, finds the cases and reads the
first images. The main thread's own ``import`` of the same module waits for the background one (Python's
per-module import locks); nothing is imported that the run would not import anyway.

Off unless ``SEGTRT_IMPORT_PREFETCH=1``: measured on the H200 (2026-12-03, 20 whole-body CTs, fp16 compiled,
warm caches) the folder took 23.7 s with it and 22.3 s without. Imports hold Python's GIL, so the
background thread slowed the main thread's own work (its model load took 2.6 s instead of 0.6 s, the
process's own imports 1.6 s longer) instead of running beside it. Only an optimisation: a module that fails to import here is logged at DEBUG and imported again (and its
error raised) where the run needs it. :func:`summary` says what was imported, how long it took and how
long the main thread waited for it, for the run report.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time

log = logging.getLogger(__name__)

# what torch.compile / a precompiled load imports first (measured with sys.modules on torch 2.11 / 2.14)
COMPILE_MODULES = ("torch._dynamo", "torch._inductor.compile_fx")
# and on CUDA, inductor's Triton runtime (imported when compiled kernels are loaded)
CUDA_MODULES = ("triton", "torch._inductor.runtime.triton_heuristics")

_lock = threading.Lock()
_prefetch: "Prefetch | None" = None


class Prefetch:
    """One background thread importing ``modules`` in order."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules = modules
        self.seconds: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.waited_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="segtrt-import-prefetch", daemon=True)

    def _run(self) -> None:
        for name in self.modules:
            start = time.perf_counter()
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - imported (and raised) again where it is needed
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                log.debug("background import of %s failed (%s); it is imported where it is needed", name, exc)
            self.seconds[name] = round(time.perf_counter() - start, 3)

    def wait(self) -> None:
        start = time.perf_counter()
        self._thread.join()
        self.waited_seconds += time.perf_counter() - start

    def summary(self) -> dict:
        done = not self._thread.is_alive()
        info = {"modules": list(self.modules), "finished": done, "seconds": dict(self.seconds),
                "main_thread_waited_seconds": round(self.waited_seconds, 3)}
        if self.failed:
            info["failed"] = dict(self.failed)
        return info


def start(cuda: bool) -> Prefetch:
    """Start importing the compile machinery (once per process; later calls return the first prefetch)."""
    global _prefetch
    with _lock:
        if _prefetch is None:
            _prefetch = Prefetch(COMPILE_MODULES + (CUDA_MODULES if cuda else ()))
            _prefetch._thread.start()
            log.debug("importing %s in the background", ", ".join(_prefetch.modules))
        return _prefetch


def wait() -> None:
    """Block until a started prefetch has finished (no-op without one), counting the wait."""
    prefetch = _prefetch
    if prefetch is not None:
        prefetch.wait()


def summary() -> dict | None:
    """What the prefetch imported, for the run report (None when none was started)."""
    prefetch = _prefetch
    return prefetch.summary() if prefetch is not None else None
