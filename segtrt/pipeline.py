"""Overlap host file IO with device work over a sequence of cases.

While case i is predicted on the calling thread, one reader thread reads case i+1 and one writer thread
writes case i-1. The bounds keep host memory flat however many cases there are:

- read-ahead depth 1: the read of case i+1 is started only once case i's read has been handed to the
  calling thread, so at most one image beyond the one being predicted is in memory;
- one write in flight: before case i's outputs go to the writer, the calling thread waits for case i-1's
  write to finish (so predicting case i+1 waits if the writer is still busy with case i-1).

The steps are injected callables, so the pipeline never knows about images, devices or files:
``read(case) -> loaded`` (reader thread), ``predict(case, loaded) -> predicted`` (calling thread: GPU work
stays there), ``write(case, predicted) -> result`` (writer thread). Ownership: ``loaded`` is dropped once
``predict`` returns; ``predicted`` belongs to the writer until ``write`` returns.

Failures are per case: an ``Exception`` from any step of case i becomes ``on_error(case, exc)`` as case
i's result (called on the calling thread) and the other cases go on. Anything else (KeyboardInterrupt,
SystemExit) stops the run: a queued read is cancelled, the write handed over (a finished prediction, at
most one) is completed rather than thrown away, and both threads are joined before the exception
propagates, so no thread outlives the call.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

CaseT = TypeVar("CaseT")
LoadedT = TypeVar("LoadedT")
PredictedT = TypeVar("PredictedT")
ResultT = TypeVar("ResultT")

_FAILED = object()  # marks a case whose read or predict step failed (its result is already recorded)


@dataclass
class PipelineRun(Generic[ResultT]):
    """Results in the order of the cases, and the seconds the calling thread waited on each IO thread.

    ``waited`` near 0 means file IO was fully hidden behind device work.
    """

    results: list[ResultT]
    waited: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "write": 0.0})


def run_overlapped(
    cases: Sequence[CaseT],
    read: Callable[[CaseT], LoadedT],
    predict: Callable[[CaseT, LoadedT], PredictedT],
    write: Callable[[CaseT, PredictedT], ResultT],
    on_error: Callable[[CaseT, Exception], ResultT],
) -> PipelineRun[ResultT]:
    """Run read -> predict -> write for every case, overlapping reads and writes with predictions."""
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segtrt-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segtrt-write")
    try:
        return _Overlap(list(cases), read, predict, write, on_error, reader, writer).run()
    finally:
        # on an interrupt: drop a queued read, let a running read finish, complete the write handed over
        # (a finished prediction is not thrown away; writes are atomic), join both threads
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=False)


class _Overlap(Generic[CaseT, LoadedT, PredictedT, ResultT]):
    """The calling thread's loop; owns at most one pending read and one pending write."""

    def __init__(self, cases, read, predict, write, on_error, reader: ThreadPoolExecutor,
                 writer: ThreadPoolExecutor) -> None:
        self.cases: list[CaseT] = cases
        self.read, self.predict, self.write, self.on_error = read, predict, write, on_error
        self.reader, self.writer = reader, writer
        self.outcome: PipelineRun[ResultT] = PipelineRun([None] * len(cases))  # type: ignore[list-item]
        self.reading: Future | None = None
        self.writing: tuple[int, Future] | None = None

    def run(self) -> PipelineRun[ResultT]:
        self._start_read(0)
        for index in range(len(self.cases)):
            predicted = self._read_and_predict(index)
            self._finish_write()
            if predicted is not _FAILED:
                self.writing = (index, self.writer.submit(self.write, self.cases[index], predicted))
        self._finish_write()
        return self.outcome

    def _start_read(self, index: int) -> None:
        self.reading = self.reader.submit(self.read, self.cases[index]) if index < len(self.cases) else None

    def _read_and_predict(self, index: int):
        """Case ``index``'s prediction, or _FAILED with its error result recorded."""
        case = self.cases[index]
        try:
            loaded = self._wait(self.reading, "read")
        except Exception as exc:
            self._start_read(index + 1)
            return self._fail(index, exc)
        self._start_read(index + 1)  # only now: at most one image read ahead of the one predicted
        try:
            return self.predict(case, loaded)
        except Exception as exc:
            return self._fail(index, exc)

    def _finish_write(self) -> None:
        """Wait for the pending write, if any, and record its case's result."""
        if self.writing is None:
            return
        (index, future), self.writing = self.writing, None
        try:
            self.outcome.results[index] = self._wait(future, "write")
        except Exception as exc:
            self._fail(index, exc)

    def _wait(self, future: Future, kind: str):
        start = time.perf_counter()
        try:
            return future.result()
        finally:
            self.outcome.waited[kind] += time.perf_counter() - start

    def _fail(self, index: int, exc: Exception) -> object:
        self.outcome.results[index] = self.on_error(self.cases[index], exc)
        return _FAILED
