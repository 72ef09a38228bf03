"""The pool behind --devices on fake steps: dynamic sharing, failures per case, bounded read-ahead,
interrupts, a device that cannot start; results recorded on the calling thread."""

from __future__ import annotations

import threading
import time

import pytest

from segtrt.batch.pool import run_pooled
from segtrt.batch.scheduler import Limits
from segtrt.errors import BackendUnavailableError


class Recorder:
    """on_error/on_done for the pool: checks they run on the calling thread and keeps the results."""

    def __init__(self) -> None:
        self.caller = threading.current_thread()
        self.done: list[tuple[int, object]] = []

    def on_error(self, case, exc):
        assert threading.current_thread() is self.caller
        return ("failed", case, str(exc))

    def on_done(self, index, result):
        assert threading.current_thread() is self.caller
        self.done.append((index, result))


def test_pool_shares_cases_dynamically_and_fails_per_case() -> None:
    """Worker 0 is slow: the fast worker takes most cases; a failing read and predict fail only their case."""
    held, most = [0], [0]
    lock = threading.Lock()

    def read(case):
        with lock:
            held[0] += 1
            most[0] = max(most[0], held[0])
        if case == 3:
            raise ValueError("unreadable")
        return case

    def predict(worker, case, loaded):
        time.sleep(0.2 if worker == 0 else 0.01)
        with lock:
            held[0] -= 1
        if case == 5:
            raise RuntimeError("device error")
        return (worker, loaded * 10)

    recorder = Recorder()
    run = run_pooled(list(range(12)), read, predict, lambda case, p: ("done", case, p), recorder.on_error,
                     recorder.on_done, Limits(2, 2, 2), workers=2)
    results = {index: result for index, result in recorder.done}
    assert sorted(results) == list(range(12)) and len(recorder.done) == 12, "each case reported once"
    assert results[3] == ("failed", 3, "unreadable") and results[5] == ("failed", 5, "device error")
    by_worker = [sum(1 for r in results.values() if r[0] == "done" and r[2][0] == w) for w in (0, 1)]
    assert by_worker[1] > by_worker[0] >= 1
    assert all(results[i] == ("done", i, (results[i][2][0], i * 10)) for i in results if i not in (3, 5))
    assert most[0] <= 2 + 2 + 1, "read-ahead bounded by read_ahead + workers (+1 read failing)"
    assert {entry[1] for entry in run.timeline} == {"read", "predict", "write"}


def test_pool_interrupt_finishes_what_is_in_flight_then_raises() -> None:
    recorder = Recorder()
    started = threading.Event()

    def predict(worker, case, loaded):
        started.set()
        time.sleep(0.3)
        return loaded

    def on_done(index, result):
        recorder.on_done(index, result)
        raise KeyboardInterrupt  # as Ctrl-C would arrive on the calling thread

    with pytest.raises(KeyboardInterrupt):
        run_pooled(list(range(20)), lambda c: c, predict, lambda c, p: ("done", c), recorder.on_error, on_done,
                   Limits(1, 1, 1), workers=2)
    assert started.is_set() and 1 <= len(recorder.done) <= 4, "in-flight cases recorded, the rest not started"
    assert len({index for index, _ in recorder.done}) == len(recorder.done)


def test_a_device_that_cannot_start_stops_the_run() -> None:
    def prepare(worker):
        if worker == 1:
            raise BackendUnavailableError("cuda:1 is gone")

    with pytest.raises(BackendUnavailableError, match="cuda:1 is gone"):
        run_pooled(list(range(4)), lambda c: c, lambda w, c, x: (time.sleep(0.05), x)[1], lambda c, p: p,
                   lambda c, e: None, lambda i, r: None, Limits(1, 1, 1), workers=2, prepare=prepare)
