"""Several device loops sharing one set of IO threads: whichever device is free takes the next case.

The generalisation of :mod:`segtrt.batch.scheduler` to N devices. Reader threads read cases ahead in
the order given (the caller puts the largest first); each of ``workers`` device threads takes the next
read image, predicts it with its own predictor and hands the prediction to the shared writer threads.
Host memory is bounded: at most ``read_ahead + workers`` images are read and not yet predicted or being
predicted, and at most ``write_workers`` predictions wait for or are in a write.

Every result reaches the calling thread (the driver), which alone calls ``on_error`` and ``on_done``
(manifest, report, progress), in completion order. ``prepare(worker)`` runs first on each device thread
(activation, warm-up); an ``Exception`` there stops the run and is raised on the calling thread.
A KeyboardInterrupt on the calling thread stops taking cases: the predictions in flight are finished,
written and reported, every thread is joined, then it propagates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

from segtrt.batch.scheduler import Limits, ScheduleRun, Timeline

log = logging.getLogger(__name__)

CaseT = TypeVar("CaseT")
ResultT = TypeVar("ResultT")


def run_pooled(
    cases: Sequence[CaseT],
    read: Callable[[CaseT], object],
    predict: Callable[[int, CaseT, object], object],
    write: Callable[[CaseT, object], ResultT],
    on_error: Callable[[CaseT, Exception], ResultT],
    on_done: Callable[[int, ResultT], None],
    limits: Limits,
    workers: int,
    prepare: Callable[[int], None] | None = None,
) -> ScheduleRun[ResultT]:
    """Read -> predict on any free device thread -> write, for every case in ``cases`` order of reading.

    ``predict(worker, case, loaded)`` runs on device thread ``worker`` (0 .. workers - 1); the timeline's
    thread names say which device thread predicted which case.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pool = _Pool(list(cases), read, predict, write, limits, workers)
    try:
        pool.start(prepare)
        pool.drive(on_error, on_done)
        return pool.outcome
    except BaseException:
        pool.stop_taking()
        pool.join()
        pool.drain(on_error, on_done)  # finished predictions are written and reported, not thrown away
        raise
    finally:
        pool.shutdown()


class _Pool:
    def __init__(self, cases, read, predict, write, limits: Limits, workers: int) -> None:
        self.cases, self.read, self.predict, self.write = cases, read, predict, write
        self.limits, self.workers = limits, workers
        self.readers = ThreadPoolExecutor(limits.read_workers, thread_name_prefix="segtrt-read")
        self.writers = ThreadPoolExecutor(limits.write_workers, thread_name_prefix="segtrt-write")
        self.write_slots = threading.BoundedSemaphore(limits.write_workers)
        self.events: queue.Queue = queue.Queue()  # (kind, index or worker, payload) for the calling thread
        self.lock = threading.Lock()
        self.to_read = deque(range(len(cases)))
        self.reads: deque[tuple[int, Future]] = deque()
        self.held = 0  # images submitted for reading and not yet predicted
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []
        self.outcome: ScheduleRun = ScheduleRun([None] * len(cases))
        self.timeline = Timeline(self.outcome.timeline, time.perf_counter())
        self.reported = 0

    def start(self, prepare: Callable[[int], None] | None) -> None:
        with self.lock:
            self._fill()
        for worker in range(self.workers):
            thread = threading.Thread(target=self._device_loop, args=(worker, prepare),
                                      name=f"segtrt-device-{worker}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def drive(self, on_error, on_done) -> None:
        """Record results as they come until every case has one; raise a device thread's startup error."""
        while self.reported < len(self.cases):  # every case taken gets exactly one 'failed' or 'written'
            kind, key, payload = self.events.get()
            if kind == "worker_failed":
                raise payload
            if kind in ("failed", "written"):
                self._record(kind, key, payload, on_error, on_done)
        self.join()

    def drain(self, on_error, on_done) -> None:
        while True:
            try:
                kind, key, payload = self.events.get_nowait()
            except queue.Empty:
                return
            if kind in ("failed", "written"):
                self._record(kind, key, payload, on_error, on_done)

    def _record(self, kind: str, index: int, payload, on_error, on_done) -> None:
        if kind == "written":
            try:
                result = payload.result()
            except Exception as exc:
                result = on_error(self.cases[index], exc)
        else:
            result = on_error(self.cases[index], payload)
        self.outcome.results[index] = result
        self.reported += 1
        on_done(index, result)

    def stop_taking(self) -> None:
        self.stopped.set()
        with self.lock:
            for _, future in self.reads:
                future.cancel()

    def join(self) -> None:
        for thread in self.threads:
            thread.join()
        self.writers.shutdown(wait=True)

    def shutdown(self) -> None:
        self.readers.shutdown(wait=True, cancel_futures=True)
        self.writers.shutdown(wait=True)

    def _fill(self) -> None:
        """Under the lock: keep ``read_ahead + workers`` images read or being read, not yet predicted."""
        while self.to_read and self.held < self.limits.read_ahead + self.workers and not self.stopped.is_set():
            index = self.to_read.popleft()
            self.reads.append((index, self.readers.submit(self._timed, index, "read", self.read, self.cases[index])))
            self.held += 1

    def _take(self) -> tuple[int, Future] | None:
        with self.lock:
            if self.stopped.is_set() or not self.reads:
                return None
            return self.reads.popleft()

    def _release(self) -> None:
        with self.lock:
            self.held -= 1
            self._fill()

    def _device_loop(self, worker: int, prepare) -> None:
        try:
            if prepare is not None:
                prepare(worker)
        except BaseException as exc:  # a device that cannot start stops the run (on the calling thread)
            self.events.put(("worker_failed", worker, exc))
            return
        while (item := self._take()) is not None:
            self._one_case(worker, *item)
        self.events.put(("worker_finished", worker, None))

    def _one_case(self, worker: int, index: int, future: Future) -> None:
        case = self.cases[index]
        started = time.perf_counter()
        try:
            loaded = future.result()
        except Exception as exc:
            self._release()
            self.events.put(("failed", index, exc))
            return
        finally:
            with self.lock:
                self.outcome.waited["read"] += time.perf_counter() - started
        try:
            predicted = self._timed(index, "predict", self.predict, worker, case, loaded)
        except Exception as exc:
            self.events.put(("failed", index, exc))
            return
        finally:
            del loaded
            self._release()
        waiting = time.perf_counter()
        self.write_slots.acquire()
        with self.lock:
            self.outcome.waited["write"] += time.perf_counter() - waiting
        written = self.writers.submit(self._timed, index, "write", self.write, case, predicted)
        written.add_done_callback(lambda f, i=index: self._written(i, f))

    def _written(self, index: int, future: Future) -> None:
        self.write_slots.release()
        self.events.put(("written", index, future))

    def _timed(self, index: int, step: str, function, *args):
        return self.timeline.timed(index, step, function, *args)
