"""Keep the device busy: parallel readers and writers around one device loop, with bounded queues.

While case i is predicted on the calling thread (all device work stays there), up to ``read_ahead``
later cases are read by ``read_workers`` threads and up to ``write_workers`` earlier cases are written
by as many writer threads. Host memory is bounded by those numbers: at most ``read_ahead`` read images
wait, one is predicted, ``write_workers`` predictions are being written. Reading and writing (SimpleITK,
zlib) release Python's GIL, so threads run them in parallel.

The steps are injected callables, so the scheduler never knows about images, devices or files:
``read(case) -> loaded`` (a reader thread), ``predict(case, loaded) -> predicted`` (the calling thread),
``write(case, predicted) -> result`` (a writer thread). ``on_done(index, result)`` is called on the
calling thread as soon as a case is finished (written or failed), in completion order, so that the
caller can record it (manifest, report, progress) before the next case.

Failures are per case: an ``Exception`` in any step becomes ``on_error(case, exc)`` as that case's
result. Anything else (KeyboardInterrupt, SystemExit) stops the run: queued reads are cancelled,
writes of finished predictions are completed and reported through ``on_done`` (so they are not lost),
and every thread is joined before the exception propagates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

CaseT = TypeVar("CaseT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Limits:
    """Worker counts and queue bounds (each >= 1)."""

    read_workers: int = 1
    read_ahead: int = 1
    write_workers: int = 1

    def __post_init__(self) -> None:
        for name in ("read_workers", "read_ahead", "write_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ScheduleRun(Generic[ResultT]):
    """Results in case order; when the run started (seconds since the epoch); seconds the calling thread
    waited for reads / for a free writer; and a timeline of (case index, step, thread, start, end) in
    seconds since the run started."""

    results: list[ResultT]
    started_epoch: float = field(default_factory=time.time)
    waited: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "write": 0.0})
    timeline: list[tuple[int, str, str, float, float]] = field(default_factory=list)


def run_scheduled(
    cases: Sequence[CaseT],
    read: Callable[[CaseT], object],
    predict: Callable[[CaseT, object], object],
    write: Callable[[CaseT, object], ResultT],
    on_error: Callable[[CaseT, Exception], ResultT],
    on_done: Callable[[int, ResultT], None] = lambda index, result: None,
    limits: Limits = Limits(),
    prepare: Callable[[], None] | None = None,
) -> ScheduleRun[ResultT]:
    """Read -> predict -> write every case with reads and writes overlapping the predictions.

    ``prepare`` (e.g. activating and warming up the device) runs on the calling thread once the first
    reads are under way, so the first images are read while it runs.
    """
    readers = ThreadPoolExecutor(limits.read_workers, thread_name_prefix="segtrt-read")
    writers = ThreadPoolExecutor(limits.write_workers, thread_name_prefix="segtrt-write")
    loop = _Loop(list(cases), read, predict, write, on_error, on_done, limits, readers, writers)
    try:
        loop.run(prepare)
        return loop.outcome
    except BaseException:
        loop.abandon_reads()
        loop.finish_writes()  # finished predictions are written and reported, not thrown away
        raise
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=False)


def run_in_sequence(
    cases: Sequence[CaseT],
    read: Callable[[CaseT], object],
    predict: Callable[[CaseT, object], object],
    write: Callable[[CaseT, object], ResultT],
    on_error: Callable[[CaseT, Exception], ResultT],
    on_done: Callable[[int, ResultT], None] = lambda index, result: None,
    prepare: Callable[[], None] | None = None,
) -> ScheduleRun[ResultT]:
    """The same steps strictly one after another on the calling thread (``--no-overlap-io``)."""
    outcome: ScheduleRun = ScheduleRun([None] * len(cases))
    start = time.perf_counter()
    if prepare is not None:
        prepare()
    for index, case in enumerate(cases):
        try:
            result = write(case, predict(case, read(case)))
        except Exception as exc:
            result = on_error(case, exc)
        outcome.results[index] = result
        outcome.timeline.append((index, "case", threading.current_thread().name, 0.0,
                                 round(time.perf_counter() - start, 4)))
        on_done(index, result)
    return outcome


class _Loop(Generic[CaseT, ResultT]):
    """The calling thread's loop: owns the pending reads and the writes in flight."""

    def __init__(self, cases, read, predict, write, on_error, on_done, limits: Limits, readers, writers) -> None:
        self.cases = cases
        self.read, self.predict, self.write = read, predict, write
        self.on_error, self.on_done, self.limits = on_error, on_done, limits
        self.readers, self.writers = readers, writers
        self.outcome: ScheduleRun = ScheduleRun([None] * len(cases))
        self.reads: deque[tuple[int, Future]] = deque()
        self.writes: dict[Future, int] = {}
        self.next_read = 0
        self.timeline = Timeline(self.outcome.timeline, time.perf_counter())

    def run(self, prepare: Callable[[], None] | None) -> None:
        self._fill_reads(0)
        if prepare is not None:
            prepare()
        for index in range(len(self.cases)):
            self._fill_reads(index)
            predicted = self._read_and_predict(index)
            self._fill_reads(index + 1)
            if predicted is not _FAILED:
                self._wait_for_writer()
                future = self.writers.submit(self._timed, index, "write", self.write, self.cases[index], predicted)
                self.writes[future] = index
            self._harvest(block=False)
        self.finish_writes()

    def _fill_reads(self, current: int) -> None:
        """Keep reads submitted for cases ``current`` .. ``current + read_ahead``."""
        self.next_read = max(self.next_read, current)
        while self.next_read < len(self.cases) and self.next_read <= current + self.limits.read_ahead:
            index = self.next_read
            self.reads.append((index, self.readers.submit(self._timed, index, "read", self.read, self.cases[index])))
            self.next_read += 1

    def _read_and_predict(self, index: int):
        queued, future = self.reads.popleft()
        assert queued == index, (queued, index)  # internal invariant, not input validation
        started = time.perf_counter()
        try:
            loaded = future.result()
        except Exception as exc:
            return self._fail(index, exc)
        finally:
            self.outcome.waited["read"] += time.perf_counter() - started
        try:
            return self._timed(index, "predict", self.predict, self.cases[index], loaded)
        except Exception as exc:
            return self._fail(index, exc)

    def _wait_for_writer(self) -> None:
        started = time.perf_counter()
        while len(self.writes) >= self.limits.write_workers:
            self._harvest(block=True)
        self.outcome.waited["write"] += time.perf_counter() - started

    def _harvest(self, block: bool) -> None:
        """Record finished writes (at least one if ``block``), in completion order."""
        if not self.writes:
            return
        done, _ = wait(list(self.writes), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in sorted(done, key=lambda f: self.writes[f]):
            index = self.writes.pop(future)
            try:
                result = future.result()
            except Exception as exc:
                self._fail(index, exc)
                continue
            self.outcome.results[index] = result
            self.on_done(index, result)

    def finish_writes(self) -> None:
        while self.writes:
            self._harvest(block=True)

    def abandon_reads(self) -> None:
        for _, future in self.reads:
            future.cancel()
        self.reads.clear()

    def _fail(self, index: int, exc: Exception) -> object:
        result = self.on_error(self.cases[index], exc)
        self.outcome.results[index] = result
        self.on_done(index, result)
        return _FAILED

    def _timed(self, index: int, step: str, function, *args):
        return self.timeline.timed(index, step, function, *args)


class Timeline:
    """Thread-safe (case index, step, thread, start, end) entries, seconds since ``start``
    (``time.perf_counter``); :meth:`timed` runs a step and records it."""

    def __init__(self, entries: list, start: float) -> None:
        self.entries, self.start = entries, start
        self.lock = threading.Lock()

    def timed(self, index: int, step: str, function, *args):
        begin = time.perf_counter()
        try:
            return function(*args)
        finally:
            end = time.perf_counter()
            with self.lock:
                self.entries.append((index, step, threading.current_thread().name,
                                     round(begin - self.start, 4), round(end - self.start, 4)))


_FAILED = object()  # marks a case whose read or predict step failed (its result is already recorded)
