"""A prediction run over many cases: model loading, case discovery, per-case isolation, run report."""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from segtrt import __version__
from segtrt.backends import create_runners
from segtrt.config import PredictSettings
from segtrt.devices import resolve_device
from segtrt.errors import InputImageError, SegtrtError
from segtrt.io import Case, Geometry, discover_cases
from segtrt.io.writers import atomic_write_bytes
from segtrt.nnunet import load_model
from segtrt.pipeline import run_overlapped
from segtrt.predictor import CaseResult, Prediction, Predictor

log = logging.getLogger(__name__)

REPORT_NAME = "segtrt_report.json"


@dataclass
class RunReport:
    """Everything a run did: settings, device and backend choices with reasons, per-case results.

    io: how file IO was scheduled, ``{"overlapped": bool, ...}`` (see :func:`_predict_cases`).
    """

    path: Path
    settings: dict
    device: dict
    backend: dict
    model: dict
    cases: list[CaseResult] = field(default_factory=list)
    seconds_total: float = 0.0
    io: dict = field(default_factory=dict)

    def to_json(self) -> str:
        cases = [
            {**asdict(c), "output": str(c.output) if c.output else None,
             "probabilities": str(c.probabilities) if c.probabilities else None, "ok": c.ok}
            for c in self.cases
        ]
        body = {
            "segtrt_version": __version__, "torch": torch.__version__, "host": platform.node(),
            "settings": self.settings, "device": self.device, "backend": self.backend, "model": self.model,
            "io": self.io, "cases": cases, "failed": sum(not c.ok for c in self.cases), "seconds_total": self.seconds_total,
        }
        return json.dumps(body, indent=2, default=str)


def run_prediction(
    model_dir: Path,
    inputs: Sequence[Path],
    output_dir: Path,
    settings: PredictSettings,
    progress_bar: bool = False,
) -> RunReport:
    """Predict every case found in ``inputs`` into ``output_dir``; a failing case is reported, not fatal."""
    start = time.perf_counter()
    device, device_reason = resolve_device(settings.device)
    model = load_model(
        model_dir, configuration=settings.configuration, folds=settings.folds,
        checkpoint_name=settings.checkpoint_name, trust=settings.trust_checkpoint, device=device,
    )
    folder = model.folder
    cases = discover_cases(inputs, folder.num_input_channels, folder.file_ending, folder.channel_names)
    _refuse_overwriting_inputs(cases, output_dir)
    runners, backend = create_runners(model, settings, device)
    report = RunReport(
        path=output_dir / REPORT_NAME, settings=asdict(settings),
        device={"device": str(device), "reason": device_reason}, backend=backend,
        model={"path": str(folder.path), "configuration": folder.configuration_name,
               "folds": list(folder.folds), "identity": model.identity},
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    with Predictor(folder, runners, settings, model.mirror_axes, device) as predictor:
        report.cases, report.io = _predict_cases(predictor, cases, output_dir, settings.overlap_io, progress_bar)
    report.seconds_total = time.perf_counter() - start
    atomic_write_bytes(report.path, report.to_json().encode())
    return report


def _predict_cases(
    predictor: Predictor, cases: list[Case], output_dir: Path, overlap_io: bool, progress_bar: bool
) -> tuple[list[CaseResult], dict]:
    """Every case's result, in the order of ``cases``, and the report's "io" entry."""
    if not overlap_io:
        results = [_predict_one(predictor, case, output_dir, progress_bar) for case in cases]
        return results, {"overlapped": False, "reason": "overlap_io is off (--no-overlap-io)"}
    steps = _OverlapSteps(predictor, output_dir, progress_bar)
    run = run_overlapped(cases, predictor.read_case, steps.predict, steps.write, _failed_case)
    waited = {kind: round(seconds, 3) for kind, seconds in run.waited.items()}
    log.debug("file IO overlapped with device work; waited on reads/writes: %s s", waited)
    return run.results, {"overlapped": True, "read_ahead": 1, "writes_in_flight": 1, "waited_seconds": waited}


def _predict_one(predictor: Predictor, case: Case, output_dir: Path, progress_bar: bool) -> CaseResult:
    bar = _ProgressBar(case.case_id) if progress_bar else None
    try:
        return predictor.predict_case(case, output_dir, bar.update_windows if bar else None)
    except Exception as exc:  # a bad case must not stop the batch
        return _failed_case(case, exc)
    finally:
        if bar is not None:
            bar.close()


def _failed_case(case: Case, exc: Exception) -> CaseResult:
    """The result of a case that raised: a user error is one log line, anything else logs its traceback."""
    if isinstance(exc, SegtrtError):
        log.error("%s: %s", case.case_id, exc)
        return CaseResult(case.case_id, error=str(exc))
    log.error("%s: unexpected error", case.case_id, exc_info=exc)
    return CaseResult(case.case_id, error=f"{type(exc).__name__}: {exc}")


class _OverlapSteps:
    """The predictor's per-case steps as segtrt.pipeline calls them (read is ``Predictor.read_case``).

    ``predict`` runs on the calling thread (the device, the progress bar); ``write`` on the writer thread.
    """

    def __init__(self, predictor: Predictor, output_dir: Path, progress_bar: bool) -> None:
        self.predictor, self.output_dir, self.progress_bar = predictor, output_dir, progress_bar

    def predict(self, case: Case, loaded: tuple[np.ndarray, Geometry, float]) -> tuple[Prediction, Geometry]:
        """Segment the read image (C, Z, Y, X); the result no longer holds the image."""
        image, geometry, read_seconds = loaded
        bar = _ProgressBar(case.case_id) if self.progress_bar else None
        try:
            prediction = self.predictor.predict_image(image, geometry.spacing, bar.update_windows if bar else None)
        finally:
            if bar is not None:
                bar.close()
        prediction.seconds["read"] = read_seconds
        return prediction, geometry

    def write(self, case: Case, predicted: tuple[Prediction, Geometry]) -> CaseResult:
        prediction, geometry = predicted
        return self.predictor.write_case(case, prediction, geometry, self.output_dir)


def _refuse_overwriting_inputs(cases: list[Case], output_dir: Path) -> None:
    inputs = {p.resolve() for case in cases for p in case.channels}
    for case in cases:
        target = (output_dir / f"{case.case_id}.nii.gz").resolve()
        if target in inputs:
            raise InputImageError(f"the output {target} would overwrite an input; choose another -o folder")


class _ProgressBar:
    """tqdm bar over the windows of one case; created once the total is known."""

    def __init__(self, case_id: str) -> None:
        self.case_id, self.bar = case_id, None

    def update_windows(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.case_id, unit="window", leave=False)
        self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
