"""``--devices``: one batch on several local devices, one warm predictor each, sharing the cases.

Each device gets its own copy of the model and runners (loaded once), its own device thread, and
takes the next case whenever it is free (segtrt.batch.pool); cases are read largest first (by input
bytes) so that a big case does not start last and keep one device busy alone at the end. The reader
and writer threads of the batch job feed all devices; the manifest and report are written only by the
calling thread, as on one device. Each case is computed by one device exactly as on a single device,
so the outputs are the same.

``cpu,cpu`` gives two CPU workers: it exists to test the pool on machines without a GPU (two CPU
workers share the cores; it is not faster than one).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch

from segtrt.backends import create_runners
from segtrt.batch.job import manifest_record, CaseSteps, default_workers
from segtrt.batch.pool import run_pooled
from segtrt.batch.scheduler import Limits
from segtrt.config import PredictSettings
from segtrt.devices import resolve_device
from segtrt.errors import BackendUnavailableError
from segtrt.io import Case
from segtrt.nnunet import load_model
from segtrt.predictor import Predictor

log = logging.getLogger(__name__)


def resolve_devices(names: Sequence[str]) -> list[torch.device]:
    """The torch devices for ``names``: 'all' is every visible CUDA device; a CUDA device listed twice
    is refused (two predictors on one GPU are what ``--ray-actors-per-gpu`` is for); 'cpu' may repeat."""
    if tuple(names) == ("all",):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BackendUnavailableError("--devices all: torch sees no CUDA device; list devices, e.g. cpu,cpu")
        return [torch.device("cuda", index) for index in range(count)]
    if "all" in names or "auto" in names:
        raise BackendUnavailableError(f"--devices takes 'all' alone or a list such as cuda:0,cuda:1; got {','.join(names)}")
    devices = [resolve_device(name)[0] for name in names]
    cuda = [str(d) for d in devices if d.type == "cuda"]
    if len(set(cuda)) != len(cuda):
        raise BackendUnavailableError(f"--devices lists a CUDA device twice ({','.join(names)}); list each GPU once")
    return devices


def input_bytes(case: Case) -> int:
    """Bytes of every file ``case`` reads (a DICOM folder's files summed); 0 for what cannot be read."""
    total = 0
    for path in case.input_files():
        try:
            files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
            total += sum(p.stat().st_size for p in files)
        except OSError:
            continue
    return total


def largest_first(cases: Sequence[Case]) -> list[Case]:
    """Cases by input bytes, largest first; ties by name (a deterministic order)."""
    return sorted(cases, key=lambda case: (-input_bytes(case), case.case_id))


class DeviceWorkers:
    """The workers of ``--devices``: one model, runner set and predictor per device (for segtrt.batch.job)."""

    def __init__(self, names: Sequence[str], model_dir: Path, settings: PredictSettings) -> None:
        if settings.device != "auto":
            raise BackendUnavailableError(f"--devices replaces --device; got both (--device {settings.device})")
        self.devices = resolve_devices(names)
        self.settings = settings
        self.models = [load_model(model_dir, configuration=settings.configuration, folds=settings.folds,
                                  checkpoint_name=settings.checkpoint_name, trust=settings.trust_checkpoint,
                                  device=device) for device in self.devices]
        self.model = self.models[0]
        self.predictors: list[Predictor] = []
        self.device_entry = {"device": ",".join(str(d) for d in self.devices),
                             "reason": f"requested --devices {','.join(names)}", "workers": len(self.devices)}

    def start(self, output_dir: Path, outputs) -> dict:
        """Runners and a predictor per device; the backend entry of the report (every device's runner)."""
        backends = []
        for model, device in zip(self.models, self.devices):
            runners, backend = create_runners(model, self.settings, device)
            self.predictors.append(Predictor(model.folder, runners, self.settings, model.mirror_axes, device))
            backends.append(backend)
        return {**backends[0], "devices": [{"device": str(d), "runner": b["runner"]}
                                           for d, b in zip(self.devices, backends)]}

    def run_cases(self, report, to_run, manifest, batch, listener, writer) -> None:
        """Like the one-device job: every case of ``to_run`` read, predicted on a free device, written."""
        if not to_run:
            report.state = "finished"
            report.write()
            return
        ordered = largest_first(to_run)
        by_id = {record.case_id: record for record in report.cases}
        position = {record.case_id: i for i, record in enumerate(report.cases)}
        workers = batch.io_workers or default_workers()
        limits = Limits(workers, workers, workers) if self.settings.overlap_io else Limits(1, 1, 1)
        steps = _DeviceSteps(report.path.parent, by_id, writer, self.predictors)

        def finished(index: int, record) -> None:
            by_id[record.case_id] = record
            report.cases[position[record.case_id]] = record
            manifest.append(manifest_record(ordered[index], record, report.model["identity"],
                                             report.model["settings_key"]))
            report.write()
            if listener is not None:
                listener.case_finished(record, report)

        def prepare(worker: int) -> None:
            device = self.devices[worker]
            if device.type == "cuda":
                torch.cuda.set_device(device)  # this thread's current device
            self.predictors[worker].activate()

        try:
            run = run_pooled(ordered, steps.read, steps.predict, steps.write, steps.failed, finished, limits,
                             len(self.predictors), prepare)
        except BaseException as exc:
            report.state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            report.write()
            raise
        finally:
            self._refresh_runners(report)
        report.startup.update({f"device_{i}": p.startup_seconds() for i, p in enumerate(self.predictors)})
        report.io = {"overlapped": self.settings.overlap_io, "read_workers": limits.read_workers,
                     "read_ahead": limits.read_ahead, "write_workers": limits.write_workers,
                     "devices": [str(d) for d in self.devices], "order": "largest input first",
                     "cases_per_device": _cases_per_device(run.timeline, ordered),
                     "waited_seconds": {k: round(v, 3) for k, v in run.waited.items()},
                     "started_epoch": run.started_epoch, "timeline": [list(entry) for entry in run.timeline]}
        report.state = "finished"
        report.write()

    def _refresh_runners(self, report) -> None:
        """After the run, each device's runner entry says how it started (first call, warm or cold cache)."""
        entries = [{"device": str(device), "runner": predictor.runners[0].describe()}
                   for device, predictor in zip(self.devices, self.predictors)]
        report.backend["devices"] = entries
        report.backend["runner"] = entries[0]["runner"]

    def close(self) -> None:
        for predictor in self.predictors:
            predictor.close()


class _DeviceSteps(CaseSteps):
    """The job's steps with one predictor per device thread (reads and writes are host-only)."""

    def __init__(self, output_dir: Path, records, writer, predictors: list[Predictor]) -> None:
        super().__init__(output_dir, records, writer)
        self.predictors = predictors
        self.predictor = predictors[0]

    def predict(self, worker: int, case: Case, loaded):  # type: ignore[override]
        image, geometry, read_seconds = loaded
        start = time.perf_counter()
        prediction = self.predictors[worker].predict_image(image, geometry.spacing)
        prediction.seconds["read"] = read_seconds
        log.debug("%s predicted on %s in %.2f s", case.case_id, self.predictors[worker].device,
                  time.perf_counter() - start)
        return prediction, geometry, image


def _cases_per_device(timeline, ordered: Sequence[Case]) -> dict[str, list[str]]:
    """Which device thread predicted which case (from the pool's timeline)."""
    result: dict[str, list[str]] = {}
    for index, step, thread, _, _ in sorted(timeline, key=lambda entry: entry[3]):
        if step == "predict":
            result.setdefault(thread, []).append(ordered[index].case_id)
    return result
