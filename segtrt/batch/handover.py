"""Eager cases while the compiled network gets ready: a batch's first cases need not wait for torch.compile.

A compiled run's start costs seconds before its first prediction can be made: importing torch's compiler
(4.8-7.9 s on the H200 machines of 2026-12-03), then loading the saved kernels (2.4-4.1 s) or compiling
them (~13-20 s the first time). With ``--while-compiling eager`` (opt-in; ``--compile`` batches on one CUDA
device) the batch activates an eager runner of the same network (its own copy of the weights, same
precision) and starts the compiled predictor's activation and warm-up on a thread; each case is
predicted by the compiled network when it is ready and by the eager one until then. A case is predicted
whole by one of them (the switch happens between cases), and the report says which cases ran eager.

Measured on the H200 (2026-12-03, 20 whole-body CTs, fp16, mirroring on, warm caches): no faster. The
compiled network was ready after 9.8 s, one case ran eager and took 8.6 s instead of the 4.6 s an eager
case takes alone (the compile thread's imports hold Python's GIL and its warm-up shares the GPU), and the
folder took 61.4 s against 58.8-59.3 s waiting (another machine of the same kind). Hence not the default.

If the compiled network fails to get ready, the batch goes on eagerly: logged as a warning and in the
report (``backend.while_compiling``), never silent. At the end the batch waits for a compile still under
way (so that inductor's cache and segtrt's precompiled entry are complete for the next run); the wait is
logged and reported.

Not with ``--cuda-graph``: in CUDA's global capture mode (torch's default) other threads may not allocate
or synchronise while a graph is being captured, which the eager cases would do; that run waits for its network as before (and the report says so). Nor with
``--devices`` / ``--ray`` (each worker starts its own network; a warning says so).
"""

from __future__ import annotations

import logging
import threading
import time

from segtrt.config import AHEAD_OF_TIME

log = logging.getLogger(__name__)


class EagerUntilCompiled:
    """A predictor-like pair: ``compiled`` is activated on a thread, ``eager`` serves until it is ready.

    read_case / write_case / warm_up_shape and the rest come from the compiled predictor (the two share
    the model folder and settings; only their runners differ)."""

    def __init__(self, compiled, eager) -> None:
        self.compiled, self.eager = compiled, eager
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._started = 0.0
        self.ready_after_seconds: float | None = None
        self.eager_cases: list[str] = []
        self.compiled_cases: list[str] = []
        self.waited_at_end_seconds = 0.0
        self._warned = False

    def __getattr__(self, name: str):  # read_case, write_case, settings, folder, options ...
        return getattr(self.compiled, name)

    def activate(self) -> "EagerUntilCompiled":
        """Activate the eager predictor here, then start the compiled one's activation on a thread."""
        self.eager.activate()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._activate_compiled, name="segtrt-compile", daemon=True)
        self._thread.start()
        return self

    def _activate_compiled(self) -> None:
        try:
            self.compiled.activate()
            warm_up = self.compiled.startup_seconds().get("warm_up", "done")
            if str(warm_up).startswith("failed"):
                raise RuntimeError(f"its warm-up call {warm_up}")
        except BaseException as exc:  # noqa: BLE001 - explicit: logged, reported, the batch goes on eagerly
            self._error = exc
        finally:
            self.ready_after_seconds = round(time.perf_counter() - self._started, 3)
            self._ready.set()

    @property
    def compiled_ready(self) -> bool:
        return self._ready.is_set() and self._error is None

    def choose(self, case_id: str):
        """The predictor for the next case, recorded under ``case_id``."""
        if self.compiled_ready:
            self.compiled_cases.append(case_id)
            return self.compiled
        if self._error is not None and not self._warned:
            self._warned = True
            log.warning("the compiled network did not get ready (%s); the batch goes on with the eager network",
                        _one_line(self._error))
        self.eager_cases.append(case_id)
        return self.eager

    def predict_image(self, image, spacing, progress=None, case_id: str = "?"):
        return self.choose(case_id).predict_image(image, spacing, progress)

    def wait(self) -> None:
        """Wait for the compiled network's activation (a compile under way finishes, filling the caches)."""
        if self._thread is None or not self._thread.is_alive():
            return
        log.info("waiting for the compiled network to finish getting ready (its caches serve the next run)")
        start = time.perf_counter()
        self._thread.join()
        self.waited_at_end_seconds = round(time.perf_counter() - start, 3)

    def close(self) -> None:
        """Wait for the thread, then close the compiled predictor and the eager one (reverse order of
        activation: each runner restores the process-wide flags it changed)."""
        try:
            self.wait()
        finally:
            try:
                self.compiled.close()
            finally:
                self.eager.close()

    def startup_seconds(self) -> dict:
        """The eager predictor's start (what the first case waited for); the compiled one's is in summary()."""
        return dict(self.eager.startup_seconds())

    def summary(self) -> dict:
        """For the run report: which cases ran eager, when the compiled network was ready, what it cost."""
        state = ("ready" if self.compiled_ready else f"failed: {_one_line(self._error)}" if self._error is not None
                 else "not ready")
        return {"mode": "eager", "compiled": state, "ready_after_seconds": self.ready_after_seconds,
                "compiled_startup": self.compiled.startup_seconds(), "eager_cases": list(self.eager_cases),
                "compiled_cases": len(self.compiled_cases), "waited_at_end_seconds": self.waited_at_end_seconds}


def _one_line(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if exc is not None else ""
    return " ".join(text.split())[:300]


def handover_reason(settings, backend: str, device) -> str | None:
    """Why a batch with these settings cannot predict eagerly while compiling (None when it can)."""
    if settings.compile == "off":
        return "not compiling"
    if backend != "torch":
        return f"backend {backend}"
    if getattr(device, "type", str(device)) != "cuda":
        return "not on CUDA (on the CPU no compile call is made ahead)"
    if settings.cuda_graph:
        return "--cuda-graph (no allocations on other threads while a graph is captured)"
    if settings.compile in AHEAD_OF_TIME:
        return "--compile aot (packages are loaded in a child process probe)"
    return None
