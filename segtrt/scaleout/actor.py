"""The work one Ray actor does: a warm predictor (model loaded and runners activated once per actor)
that reads, predicts and writes whole cases on storage every node sees.

A plain class without Ray: segtrt.scaleout.workers wraps it in ``ray.remote`` on the driver, so this
module can be tested, and imported on a worker node, like any other. Every output is written atomically
(segtrt.io.writers), so running a case again after its worker was lost mid-case is safe: the second
run replaces the files of the first (or the temporary files the lost one left are removed at the next
start of a batch in that folder).

An actor holds several cases at once (Ray runs its methods on ``max_concurrency`` threads): reading and
writing happen on those threads (SimpleITK releases Python's lock), and the device takes one case at a
time (a lock around the prediction), so the next case's read and the previous one's write overlap the
current one's network, as in the one-machine batch job.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from pathlib import Path

from segtrt.backends import create_runners
from segtrt.batch.job import CaseWriter, CaseSteps
from segtrt.batch.report import CaseRecord
from segtrt.config import PredictSettings
from segtrt.devices import resolve_device
from segtrt.errors import OutputError, SegtrtError
from segtrt.io import Case
from segtrt.nnunet import load_model
from segtrt.outputs import OutputOptions
from segtrt.predictor import Predictor

log = logging.getLogger(__name__)


class CaseWorker:
    """One warm predictor on ``device`` writing into ``output_dir`` (absolute, on shared storage)."""

    def __init__(self, model_dir: str, settings: PredictSettings, output_dir: str, outputs: OutputOptions,
                 device: str) -> None:
        started = time.perf_counter()
        self.device, reason = resolve_device(device)
        model = load_model(model_dir, configuration=settings.configuration, folds=settings.folds,
                           checkpoint_name=settings.checkpoint_name, trust=settings.trust_checkpoint,
                           device=self.device)
        runners, self.backend = create_runners(model, settings, self.device)
        self.predictor = Predictor(model.folder, runners, settings, model.mirror_axes, self.device)
        self.predictor.activate()
        self.output_dir = Path(output_dir)
        self.steps = CaseSteps(self.output_dir, {}, CaseWriter(self.output_dir, outputs, model))
        self.steps.predictor = self.predictor
        self.identity = model.identity
        self.cases_done = 0
        self.device_lock = threading.Lock()  # one case at a time on the device
        self.info = {"pid": os.getpid(), "host": platform.node(), "device": str(self.device),
                     "device_reason": reason, "model_identity": model.identity,
                     "startup_seconds": round(time.perf_counter() - started, 3),
                     **self.predictor.startup_seconds()}

    def describe(self, marker: str, token: str) -> dict:
        """This worker's process, host, device and backend, after checking that it sees the driver's
        output folder: ``marker`` is a file the driver wrote there holding ``token``."""
        try:
            seen = Path(marker).read_text(encoding="utf-8").strip()
        except OSError as error:
            seen = f"unreadable ({error.strerror})"
        if seen != token:
            raise OutputError(f"the Ray worker on {platform.node()} does not see the output folder "
                              f"{self.output_dir} as the driver does ({Path(marker).name}: {seen}); inputs and "
                              "-o must be on storage every node mounts at the same path")
        return {**self.info, "backend": self.backend}

    def run_case(self, case: Case, inputs: list[str]) -> tuple[CaseRecord, dict]:
        """Read, predict and write ``case``: its record, and this process's id with the (start, end)
        epoch seconds of each step. A segtrt error (a bad input, out of device memory) is the case's
        failed record, as on one machine; anything else raises, and the driver tries again."""
        self.steps.records[case.case_id] = CaseRecord(case.case_id, inputs=inputs)  # one entry per case held
        steps: dict[str, tuple[float, float]] = {}
        try:
            begin = time.time()
            loaded = self.steps.read(case)
            steps["read"] = (begin, time.time())
            with self.device_lock:
                begin = time.time()
                predicted = self.steps.predict(case, loaded)
                steps["predict"] = (begin, time.time())
            del loaded
            result = self.steps.write(case, predicted)
            steps["write"] = (steps["predict"][1], time.time())
        except SegtrtError as error:
            return self.steps.failed(case, error), {"pid": os.getpid(), "steps": steps}
        finally:
            self.steps.records.pop(case.case_id, None)
        self.cases_done += 1
        return result, {"pid": os.getpid(), "steps": steps}

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.predictor.close()
