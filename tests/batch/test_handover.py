"""segtrt.batch.handover: eager cases while the compiled network gets ready, then the compiled network."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segtrt.batch import REPORT_NAME
from segtrt.batch.handover import EagerUntilCompiled, handover_reason
from segtrt.cli import main
from segtrt.config import BatchSettings, PredictSettings
from segtrt.errors import SettingsError

SAMPLE_CT = Path(__file__).resolve().parents[2] / "sample_data" / "example_ct.nii.gz"


class FakePredictor:
    """Records activations, closes and predictions in one shared event list; activation may be gated."""

    def __init__(self, name: str, events: list, gate: threading.Event | None = None, error: Exception | None = None,
                 warm_up: str = "done") -> None:
        self.name, self.events, self.gate, self.error, self.warm_up = name, events, gate, error, warm_up
        self.marker = f"{name} read"

    def activate(self):
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.error is not None:
            raise self.error
        self.events.append(f"{self.name} active")
        return self

    def close(self) -> None:
        self.events.append(f"{self.name} closed")

    def startup_seconds(self) -> dict:
        return {"activate_seconds": 0.0, "warm_up": self.warm_up}

    def predict_image(self, image, spacing, progress=None):
        self.events.append(f"{self.name} predicts")
        return self.name

    def read_case(self, case):
        return self.marker


def _wait_ready(pair: EagerUntilCompiled) -> None:
    assert pair._ready.wait(10)


def test_cases_run_eager_until_the_compiled_network_is_ready_then_compiled():
    events, gate = [], threading.Event()
    pair = EagerUntilCompiled(FakePredictor("compiled", events, gate), FakePredictor("eager", events))
    pair.activate()
    assert [pair.predict_image(None, None, case_id=f"c{i}") for i in range(2)] == ["eager", "eager"]
    gate.set()
    _wait_ready(pair)
    assert [pair.predict_image(None, None, case_id=f"c{i}") for i in range(2, 5)] == ["compiled"] * 3
    assert pair.read_case("case") == "compiled read"  # host steps come from the compiled predictor
    pair.close()
    summary = pair.summary()
    assert summary["compiled"] == "ready" and summary["eager_cases"] == ["c0", "c1"]
    assert summary["compiled_cases"] == 3 and summary["ready_after_seconds"] >= 0
    assert events[0] == "eager active" and events[-2:] == ["compiled closed", "eager closed"]


def test_a_compiled_network_that_fails_leaves_the_batch_eager_and_says_so(caplog):
    events = []
    pair = EagerUntilCompiled(FakePredictor("compiled", events, error=RuntimeError("no C compiler\nfound")),
                              FakePredictor("eager", events))
    pair.activate()
    _wait_ready(pair)
    with caplog.at_level(logging.WARNING, logger="segtrt.batch.handover"):
        assert [pair.predict_image(None, None, case_id=f"c{i}") for i in range(3)] == ["eager"] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C compiler found" in warnings[0] and "eager" in warnings[0]
    pair.close()
    assert pair.summary()["compiled"] == "failed: RuntimeError: no C compiler found"
    assert pair.summary()["eager_cases"] == ["c0", "c1", "c2"]


def test_a_failed_warm_up_counts_as_not_ready():
    events = []
    pair = EagerUntilCompiled(FakePredictor("compiled", events, warm_up="failed: out of memory"),
                              FakePredictor("eager", events))
    pair.activate()
    _wait_ready(pair)
    assert pair.predict_image(None, None, case_id="c0") == "eager"
    pair.close()
    assert pair.summary()["compiled"].startswith("failed: RuntimeError: its warm-up call failed: out of memory")


def test_close_waits_for_a_compile_under_way_and_reports_the_wait():
    events, gate = [], threading.Event()
    pair = EagerUntilCompiled(FakePredictor("compiled", events, gate), FakePredictor("eager", events))
    pair.activate()
    assert pair.predict_image(None, None, case_id="only") == "eager"
    threading.Timer(0.3, gate.set).start()
    pair.close()
    assert events == ["eager active", "eager predicts", "compiled active", "compiled closed", "eager closed"]
    assert pair.summary()["waited_at_end_seconds"] >= 0.2
    assert pair.summary()["compiled"] == "ready"


@pytest.mark.parametrize("changes, device, backend, expected", [
    ({"compile": "off"}, "cuda", "torch", "not compiling"),
    ({}, "cpu", "torch", "not on CUDA"),
    ({}, "cuda", "onnxruntime", "backend onnxruntime"),
    ({"cuda_graph": True}, "cuda", "torch", "--cuda-graph"),
    ({"compile": "aot"}, "cuda", "torch", "--compile aot"),
    ({}, "cuda", "torch", None),
    ({"compile": "max-autotune"}, "cuda:1", "torch", None),
])
def test_when_a_batch_can_predict_eagerly_while_compiling(changes, device, backend, expected):
    settings = replace(PredictSettings(compile="default"), **changes)
    reason = handover_reason(settings, backend, torch.device(device))
    assert reason == expected if expected is None else reason.startswith(expected)


def test_the_option_takes_eager_or_wait_only():
    assert BatchSettings().while_compiling == "wait"  # eager measured no faster on the H200 (README)
    with pytest.raises(SettingsError, match="--while-compiling"):
        BatchSettings(while_compiling="later")


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_a_batch_predicts_eagerly_then_compiled_with_the_same_labels(tmp_path, monkeypatch):
    """The real job on the CPU (where segtrt would not pair them: the pairing is forced here): two cases
    eager while the compiled predictor is held back, the third compiled (a real CPU compile of the bundled
    model), labels as a plain eager run's, the report saying which case ran how."""
    cases = tmp_path / "in"
    cases.mkdir()
    for index in range(3):
        shutil.copy(SAMPLE_CT, cases / f"case{index}.nii.gz")
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache" / "inductor"))
    monkeypatch.setattr("segtrt.batch.job.handover_reason", lambda *args: None)
    activate, choose = EagerUntilCompiled._activate_compiled, EagerUntilCompiled.choose

    def held_back(self):  # the compiled predictor gets ready only once two cases ran eagerly
        deadline = time.monotonic() + 300
        while len(self.eager_cases) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        activate(self)

    def in_order(self, case_id):  # and the third case waits for it, so the order is fixed
        if len(self.eager_cases) >= 2:
            assert self._ready.wait(300)
        return choose(self, case_id)

    monkeypatch.setattr(EagerUntilCompiled, "_activate_compiled", held_back)
    monkeypatch.setattr(EagerUntilCompiled, "choose", in_order)
    fast = ["--device", "cpu", "--no-tta", "--no-progress", "--no-overlap-io"]
    assert main(["predict", str(cases), "-o", str(tmp_path / "paired"), *fast, "--compile", "default",
                 "--while-compiling", "eager"]) == 0
    assert main(["predict", str(cases), "-o", str(tmp_path / "eager"), *fast]) == 0
    summary = json.loads((tmp_path / "paired" / REPORT_NAME).read_text())["backend"]["while_compiling"]
    assert summary["eager_cases"] == ["case0", "case1"] and summary["compiled_cases"] == 1
    assert summary["compiled"] == "ready"
    for index in range(2):  # the eager cases are an eager run's exactly
        np.testing.assert_array_equal(_labels(tmp_path / "paired" / f"case{index}.nii.gz"),
                                      _labels(tmp_path / "eager" / f"case{index}.nii.gz"))
    compiled, eager = (_labels(tmp_path / d / "case2.nii.gz") for d in ("paired", "eager"))
    assert np.mean(compiled == eager) >= 0.9999  # the compiled fp32 network: a different summation order


def test_a_compiled_batch_that_is_not_paired_says_why_it_waits(caplog):
    """The job's choice, without running a case: waiting by default, on the CPU even when eager is asked
    (with a warning), and nothing to say for an eager run."""
    from segtrt.batch import job

    settings = PredictSettings(device="cpu", compile="default")
    eager = BatchSettings(while_compiling="eager")
    with caplog.at_level(logging.WARNING, logger="segtrt.batch.job"):
        pair, entry = job._with_eager_start("the predictor", None, settings, eager, {"backend": "torch"},
                                            torch.device("cpu"))
    assert pair == "the predictor" and entry["mode"] == "wait" and entry["reason"].startswith("not on CUDA")
    assert any("--while-compiling eager does not apply here (not on CUDA" in r.getMessage() for r in caplog.records)
    pair, entry = job._with_eager_start("the predictor", None, settings, BatchSettings(), {"backend": "torch"},
                                        torch.device("cuda"))
    assert pair == "the predictor" and entry == {"mode": "wait", "reason": "--while-compiling wait"}
    assert job._with_eager_start("p", None, PredictSettings(compile="off"), eager, {"backend": "torch"},
                                 torch.device("cuda")) == ("p", None)
