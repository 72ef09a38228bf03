"""Overlapped file IO: the pipeline on fake steps (order, overlap, bounds, failures, interrupts), then
``segtrt predict`` on copies of the bundled sample CT (CPU) with and without overlap."""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segtrt.cli import main
from segtrt.config import DEFAULT_MODEL_DIR, PredictSettings
from segtrt.io import writers
from segtrt.pipeline import run_overlapped
from segtrt.run import run_prediction

SAMPLE_CT = DEFAULT_MODEL_DIR.parent / "example_ct.nii.gz"
FAST = ["--device", "cpu", "--no-tta", "--no-progress"]
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
        self.threads: dict[str, set[str]] = {step: set() for step in self.seconds}
        self.predict_waits_for: tuple[str, ...] = ()  # events of neighbouring cases predict(c) waits for

    def event(self, step: str, case: int) -> threading.Event:
        with self.lock:
            return self.started[step].setdefault(case, threading.Event())

    def _step(self, step: str, case: int) -> None:
        start = time.perf_counter()
        self.threads[step].add(threading.current_thread().name)
        self.event(step, case).set()
        time.sleep(self.seconds[step])
        if case in self.fail.get(step, ()):
            raise ValueError(f"{step} of case {case} failed")
        self.intervals[step, case] = (start, time.perf_counter())

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


def _run(steps: FakeSteps, cases):
    return run_overlapped(cases, steps.read, steps.predict, steps.write, _on_error)


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

    with pytest.raises(KeyboardInterrupt):
        run_overlapped(range(5), steps.read, predict, steps.write, _on_error)
    # case 1's write was handed over before predict(2) raised: it completes even if it had not started
    assert ("write", 1) in steps.intervals, "the write handed over completes"
    assert ("write", 2) not in steps.intervals
    assert not _pipeline_threads()


def test_no_cases():
    assert _run(FakeSteps(), []).results == []


# --- on the bundled sample model (CPU) ---------------------------------------------------------------


def _three_cases(folder: Path, middle: bytes | None = None) -> Path:
    """a, b, c: the sample CT, the sample flipped left-right (same geometry), the sample; ``middle``
    replaces b's file bytes."""
    folder.mkdir()
    shutil.copy(SAMPLE_CT, folder / "a_0000.nii.gz")
    shutil.copy(SAMPLE_CT, folder / "c_0000.nii.gz")
    if middle is not None:
        (folder / "b_0000.nii.gz").write_bytes(middle)
        return folder
    image = sitk.ReadImage(str(SAMPLE_CT))
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, :, ::-1].copy())
    flipped.CopyInformation(image)
    sitk.WriteImage(flipped, str(folder / "b_0000.nii.gz"), True)
    return folder


def _report(out: Path) -> dict:
    return json.loads((out / "segtrt_report.json").read_text())


def _settings() -> PredictSettings:
    return PredictSettings(device="cpu", mirror=False)


def test_overlapped_labels_equal_sequential(tmp_path):
    cases = _three_cases(tmp_path / "cases")
    assert main(["predict", str(cases), "-o", str(tmp_path / "overlap"), *FAST]) == 0
    assert main(["predict", str(cases), "-o", str(tmp_path / "seq"), *FAST, "--no-overlap-io"]) == 0
    overlapped, sequential = _report(tmp_path / "overlap"), _report(tmp_path / "seq")
    assert overlapped["io"]["overlapped"] and overlapped["settings"]["overlap_io"]
    assert not sequential["io"]["overlapped"] and not sequential["settings"]["overlap_io"]
    for report in (overlapped, sequential):
        assert [c["case_id"] for c in report["cases"]] == ["a", "b", "c"]
        assert all({"read", "network", "write"} <= set(c["seconds"]) for c in report["cases"])
    labels = {}
    for case in "abc":
        labels[case] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "overlap" / f"{case}.nii.gz")))
        again = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seq" / f"{case}.nii.gz")))
        np.testing.assert_array_equal(labels[case], again)
    assert not np.array_equal(labels["a"], labels["b"]), "b is a different image"


def test_an_unreadable_case_in_the_middle_fails_alone(tmp_path):
    truncated = SAMPLE_CT.read_bytes()[: SAMPLE_CT.stat().st_size // 2]
    cases = _three_cases(tmp_path / "cases", middle=truncated)
    out = tmp_path / "out"
    report = run_prediction(DEFAULT_MODEL_DIR, [cases], out, _settings())
    assert report.io["overlapped"]
    assert [(c.case_id, c.ok) for c in report.cases] == [("a", True), ("b", False), ("c", True)]
    assert "b_0000.nii.gz" in report.cases[1].error
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "c.nii.gz", "segtrt_report.json"]


def test_a_failing_write_fails_its_case_and_leaves_no_file(tmp_path, monkeypatch):
    """The writer of case b writes half a file, then fails: b is failed, a and c are written."""
    write_image = writers.sitk.WriteImage

    def flaky(image, path, *args):
        if Path(path).name.startswith(".b.nii.gz"):
            Path(path).write_bytes(gzip.compress(b"half a label map"))
            raise OSError("disk full")
        return write_image(image, path, *args)

    monkeypatch.setattr(writers.sitk, "WriteImage", flaky)
    cases = _three_cases(tmp_path / "cases")
    out = tmp_path / "out"
    report = run_prediction(DEFAULT_MODEL_DIR, [cases], out, _settings())
    assert [(c.case_id, c.error) for c in report.cases] == [("a", None), ("b", "OSError: disk full"), ("c", None)]
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "c.nii.gz", "segtrt_report.json"]
