"""The batch scheduler on fake steps: order, overlap, parallel readers and writers, bounds, failures,
interrupts, and on_done called on the calling thread as cases finish."""

from __future__ import annotations

import threading
import time

import pytest

from segtrt.batch.scheduler import Limits, run_scheduled

WAIT = 10.0  # seconds a fake step waits for an event that only a pipelined run produces


class FakeSteps:
    """read/predict/write that sleep, record their (start, end) intervals and check the pipeline's bounds.

    read(c) -> c * 10, predict(c, x) -> x + 1, write(c, y) -> (c, y); ``fail`` maps a step to cases that raise.
    """

    def __init__(self, read_s=0.0, predict_s=0.0, write_s=0.0, fail=None) -> None:
        self.seconds = {"read": read_s, "predict": predict_s, "write": write_s}
        self.fail = fail or {}
        self.intervals: dict[tuple[str, int], tuple[float, float]] = {}
        self.started = {step: {} for step in self.seconds}  # step -> case -> threading.Event
        self.lock = threading.Lock()
        self.predicts_finished = 0
        self.max_read_ahead = 0  # largest (case being read) - (predictions finished): images held beyond one
        self.running = {step: 0 for step in self.seconds}
        self.max_running = {step: 0 for step in self.seconds}
        self.threads: dict[str, set[str]] = {step: set() for step in self.seconds}
        self.predict_waits_for: tuple[str, ...] = ()  # events of neighbouring cases predict(c) waits for

    def event(self, step: str, case: int) -> threading.Event:
        with self.lock:
            return self.started[step].setdefault(case, threading.Event())

    def _step(self, step: str, case: int) -> None:
        start = time.perf_counter()
        with self.lock:
            self.threads[step].add(threading.current_thread().name)
            self.running[step] += 1
            self.max_running[step] = max(self.max_running[step], self.running[step])
        self.event(step, case).set()
        try:
            time.sleep(self.seconds[step])
            if case in self.fail.get(step, ()):
                raise ValueError(f"{step} of case {case} failed")
            self.intervals[step, case] = (start, time.perf_counter())
        finally:
            with self.lock:
                self.running[step] -= 1

    def read(self, case: int) -> int:
        with self.lock:
            self.max_read_ahead = max(self.max_read_ahead, case - self.predicts_finished)
        self._step("read", case)
        return case * 10

    def predict(self, case: int, loaded: int) -> int:
        try:
            for step, offset in self.predict_waits_for:
                assert self.event(step, case + offset).wait(WAIT), f"{step} of case {case + offset} never started"
            self._step("predict", case)
            return loaded + 1
        finally:
            with self.lock:
                self.predicts_finished += 1

    def write(self, case: int, predicted: int) -> tuple[int, int]:
        self._step("write", case)
        return case, predicted


def _on_error(case: int, exc: Exception) -> str:
    assert threading.current_thread() is threading.main_thread()
    return f"case {case}: {exc}"


def _run(steps: FakeSteps, cases, limits: Limits = Limits(), on_done=lambda index, result: None):
    return run_scheduled(cases, steps.read, steps.predict, steps.write, _on_error, on_done, limits)


def _pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("segtrt-")]


def test_results_keep_case_order_and_steps_run_on_their_threads():
    steps = FakeSteps(read_s=0.01, write_s=0.02)
    run = _run(steps, [3, 1, 4, 0, 2])
    assert run.results == [(3, 31), (1, 11), (4, 41), (0, 1), (2, 21)]
    assert all(name.startswith("segtrt-read") for name in steps.threads["read"])
    assert all(name.startswith("segtrt-write") for name in steps.threads["write"])
    assert steps.threads["predict"] == {threading.main_thread().name}
    assert set(run.waited) == {"read", "write"}
    assert not _pipeline_threads()


def test_reads_and_writes_overlap_predictions():
    """predict(c) only proceeds once read(c + 1) and write(c - 1) have started: a sequential run would fail."""
    steps = FakeSteps(read_s=0.2, predict_s=0.2, write_s=0.2)
    steps.predict_waits_for = (("read", 1), ("write", -1))
    for step, case in (("write", -1), ("read", 4)):  # no such cases
        steps.event(step, case).set()
    assert _run(steps, range(4)).results == [(c, c * 10 + 1) for c in range(4)]
    spans = steps.intervals
    for case in range(3):
        assert spans["read", case + 1][0] < spans["predict", case][1]
        assert spans["write", case][0] < spans["predict", case + 1][1]


def test_at_most_one_image_is_read_ahead():
    """Reads are instant and predict(c) waits for read(c + 1): an unbounded reader would run far ahead."""
    steps = FakeSteps(predict_s=0.05)
    steps.predict_waits_for = (("read", 1),)
    steps.event("read", 5).set()
    _run(steps, range(5))
    assert steps.max_read_ahead == 1


def test_at_most_one_write_in_flight():
    """Slow writes: predicting case c + 1 waits until case c - 1 is written."""
    steps = FakeSteps(write_s=0.1)
    _run(steps, range(5))
    for case in range(1, 4):
        assert steps.intervals["predict", case + 1][0] >= steps.intervals["write", case - 1][1]


def test_a_failing_step_fails_only_its_case():
    steps = FakeSteps(read_s=0.01, write_s=0.01, fail={"read": {1}, "predict": {2}, "write": {3}})
    results = _run(steps, range(5)).results
    assert results == [(0, 1), "case 1: read of case 1 failed", "case 2: predict of case 2 failed",
                       "case 3: write of case 3 failed", (4, 41)]
    assert ("predict", 1) not in steps.intervals, "a case that could not be read is not predicted"
    assert "write" not in {step for step, case in steps.intervals if case == 2}


def test_interrupt_completes_the_write_handed_over_and_joins_the_threads():
    steps = FakeSteps(write_s=0.3, fail={})
    original = steps.predict

    def predict(case: int, loaded: int) -> int:
        if case == 2:
            raise KeyboardInterrupt
        return original(case, loaded)

    done: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        run_scheduled(range(5), steps.read, predict, steps.write, _on_error, lambda i, r: done.append(i))
    # case 1's write was handed over before predict(2) raised: it completes even if it had not started
    assert ("write", 1) in steps.intervals, "the write handed over completes"
    assert ("write", 2) not in steps.intervals
    assert 1 in done, "the completed write is reported, so the caller can record it"
    assert not _pipeline_threads()


def test_no_cases():
    assert _run(FakeSteps(), []).results == []


def test_parallel_readers_and_writers_run_at_once():
    """Reads and writes slower than predictions: with 3 workers each, 3 of each run at the same time,
    and the whole run takes about a third of the sequential read time."""
    steps = FakeSteps(read_s=0.3, predict_s=0.02, write_s=0.3)
    started = time.perf_counter()
    run = _run(steps, range(9), Limits(read_workers=3, read_ahead=3, write_workers=3))
    elapsed = time.perf_counter() - started
    assert run.results == [(c, c * 10 + 1) for c in range(9)]
    assert steps.max_running["read"] == 3 and steps.max_running["write"] == 3
    assert len(steps.threads["read"]) == 3 and len(steps.threads["write"]) == 3
    assert elapsed < 9 * 0.3 * 0.6, elapsed  # sequential reads alone would take 2.7 s
    assert steps.max_read_ahead <= 3


def test_read_ahead_is_bounded_by_the_limit():
    steps = FakeSteps(predict_s=0.05)
    steps.predict_waits_for = (("read", 2),)
    for case in (8, 9):
        steps.event("read", case).set()
    _run(steps, range(8), Limits(read_workers=2, read_ahead=2, write_workers=1))
    assert steps.max_read_ahead == 2


def test_on_done_is_called_once_per_case_on_the_calling_thread():
    calls: list[tuple[int, str]] = []

    def on_done(index, result):
        calls.append((index, threading.current_thread().name))

    steps = FakeSteps(write_s=0.02, fail={"read": {2}, "write": {4}})
    _run(steps, range(6), Limits(2, 2, 2), on_done)
    assert sorted(index for index, _ in calls) == list(range(6))
    assert {name for _, name in calls} == {threading.main_thread().name}


def test_timeline_records_every_step():
    run = _run(FakeSteps(), range(3))
    steps = {(index, step) for index, step, *_ in run.timeline}
    assert steps == {(c, s) for c in range(3) for s in ("read", "predict", "write")}
    assert all(end >= begin for *_, begin, end in run.timeline)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="write_workers must be >= 1"):
        Limits(write_workers=0)
