"""A batch job: discovery -> manifest (resume) -> scheduler (parallel IO around the device) -> report.

``run_batch`` is what ``segtrt predict`` calls for one file or for a hospital's whole tree. The
predictor stays free of discovery and bookkeeping; this module wires the stages together and owns the
manifest and the report, which it updates after every case (on the calling thread).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from segtrt.backends import compile_used, create_runners, torch_runner
from segtrt.batch.discovery import Discovery, ModelInputs, discover
from segtrt.batch.handover import EagerUntilCompiled, handover_reason
from segtrt.batch.manifest import Manifest, fingerprint, remove_temporary_files, settings_key
from segtrt.batch.report import REPORT_NAME, BatchReport, CaseRecord
from segtrt.batch.scheduler import Limits, run_in_sequence, run_scheduled
from segtrt.batch.series import SeriesFilter
from segtrt.config import BatchSettings, PredictSettings, ScaleSettings
from segtrt.devices import resolve_device
from segtrt.errors import InputImageError, SegtrtError
from segtrt.io import Case, DicomSeries, Geometry
from segtrt.nnunet import load_model
from segtrt.outputs import (BatchCaseSummary, ModelDescription, OutputOptions, label_names_from_dataset,
                            write_batch_outputs, write_case_outputs)
from segtrt.predictor import Prediction, Predictor

log = logging.getLogger(__name__)


class BatchListener(Protocol):
    """What a front end (the CLI's progress bar) is told; every call is on the calling thread."""

    def started(self, total: int, to_run: int, skipped: int) -> None: ...

    def case_finished(self, record: CaseRecord, report: BatchReport) -> None: ...


def run_batch(
    model_dir: Path, inputs: Sequence[Path], output_dir: Path, settings: PredictSettings,
    batch: BatchSettings = BatchSettings(), listener: BatchListener | None = None,
    outputs: OutputOptions = OutputOptions(), scale: ScaleSettings = ScaleSettings(), workers=None,
) -> BatchReport:
    """Predict every case found in ``inputs`` into ``output_dir``; a failing case is reported, not fatal.

    ``workers``: the opened workers of ``--devices`` / ``--ray`` (segtrt.spread opens them from ``scale``);
    None runs on this process's one device. Raises SegtrtError for problems of the whole run (no model,
    no cases, an output over an input); KeyboardInterrupt after the finished cases are written and
    recorded, with the report saying so.
    """
    started, started_epoch = time.perf_counter(), time.time()
    if scale.spread and workers is None:
        raise ValueError("a --devices / --ray batch needs its workers: call segtrt.spread.predict_batch")
    if workers is None:
        device, device_reason = resolve_device(settings.device)
        model = load_model(model_dir, configuration=settings.configuration, folds=settings.folds,
                           checkpoint_name=settings.checkpoint_name, trust=settings.trust_checkpoint, device=device)
        device_entry = {"device": str(device), "reason": device_reason}
    else:
        model, device_entry = workers.model, workers.device_entry
    model_seconds = time.perf_counter() - started
    folder = model.folder
    found = _discover(inputs, folder, batch, output_dir)
    discovered = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_temporary_files(output_dir)
    manifest = Manifest(output_dir)
    key = settings_key({**result_settings(settings, folder), "outputs": outputs_key(outputs)})
    records, to_run, resume = _plan(found.cases, manifest, model.identity, key, batch.overwrite, output_dir, outputs)
    planned = time.perf_counter()
    if workers is None:
        runners, backend = create_runners(model, settings, device)
    else:
        if batch.while_compiling == "eager":
            log.warning("--while-compiling eager applies to one device; with --devices / --ray each worker's first "
                        "case waits for its compiled network")
        backend = workers.start(output_dir, outputs)
    runners_ready = time.perf_counter()
    report = BatchReport(
        path=output_dir / REPORT_NAME, settings={**asdict(settings), **asdict(batch), "outputs": asdict(outputs),
                                                "scale": asdict(scale)},
        device=device_entry, backend=backend,
        model={"path": str(folder.path), "configuration": folder.configuration_name, "folds": list(folder.folds),
               "identity": model.identity, "settings_key": key},
        cases=records, discovery=_discovery_entry(found), started=started, started_epoch=started_epoch,
        resume={**resume, "temporary_files_removed": len(removed)},
    )
    report.startup.update(model_load_seconds=round(model_seconds, 3),
                          discovery_seconds=round(discovered - started - model_seconds, 3),
                          plan_seconds=round(planned - discovered, 3),
                          runners_seconds=round(runners_ready - planned, 3))
    report.write()
    manifest.announce([case.case_id for case in to_run], model.identity, key)
    if listener is not None:
        listener.started(len(records), len(to_run), resume["skipped"])
    writer = CaseWriter(output_dir, outputs, model)
    try:
        if workers is None:
            _run_cases(report, to_run, manifest, model, runners, compile_used(settings, backend), batch, device,
                       listener, writer)
        else:
            workers.run_cases(report, to_run, manifest, batch, listener, writer)
    finally:
        if workers is not None:
            workers.close()
        _write_batch_outputs(report, outputs)
    return report


def result_settings(settings: PredictSettings, folder) -> dict:
    """The settings that change what is computed (a change recomputes resumed cases). Settings that
    change only speed or memory (device, batch size, compile, streaming, workers) are not in it."""
    return {"backend": settings.backend, "precision": settings.precision, "step_size": settings.step_size,
            "mirror": settings.mirror, "accumulate": settings.accumulate_dtype,
            "configuration": folder.configuration_name, "folds": list(folder.folds),
            "checkpoint": settings.checkpoint_name, "probabilities": settings.save_probabilities}


def outputs_key(outputs: OutputOptions) -> dict:
    """The output options that change which files a case has (part of the manifest's settings key)."""
    return {"formats": sorted(outputs.formats), "statistics": outputs.statistics, "preview": outputs.preview,
            "label_codes": str(outputs.label_codes) if outputs.label_codes else None,
            "seg_encoding": outputs.seg_encoding}


def default_workers(cores: int | None = None) -> int:
    """Reader/writer threads per kind: a quarter of the cores, 1 to 4 (16 cores -> 4, 2 cores -> 1)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(4, cores // 4))


def _discover(inputs: Sequence[Path], folder, batch: BatchSettings, output_dir: Path) -> Discovery:
    rules = SeriesFilter(modality=batch.modality, description=batch.series_description,
                         min_slices=batch.min_slices, series_uids=tuple(batch.series_uids))
    found = discover(inputs, ModelInputs(folder.num_input_channels, tuple(folder.channel_names)),
                     recursive=batch.recursive, series_filter=rules, exclude=output_dir)
    for entry in found.skipped:
        log.info("skipped %s: %s", entry.path, entry.reason)
    if not found.cases:
        first = f"; e.g. {found.skipped[0].path}: {found.skipped[0].reason}" if found.skipped else ""
        hint = "" if batch.recursive else " (sub-folders are searched with --recursive)"
        raise InputImageError(f"found no cases to segment in {', '.join(map(str, inputs))}{hint}: "
                              f"{len(found.skipped)} entries skipped{first}")
    _refuse_overwriting_inputs(found.cases, output_dir)
    return found


def _plan(cases: list[Case], manifest: Manifest, identity: str, key: str, overwrite: bool, output_dir: Path,
          outputs: OutputOptions = OutputOptions()):
    """Each case's record, the cases to run, and the report's 'resume' entry."""
    records, to_run, skipped = [], [], 0
    for case in cases:
        record = CaseRecord(case.case_id, inputs=[str(p) for p in case.input_files()])
        decision = manifest.decide(case, identity, key, overwrite)
        if decision.action == "skip":
            previous = manifest.records[case.case_id]
            record.status, record.reason = "skipped", decision.reason
            record.outputs = dict(previous.get("outputs", {}))
            segmentation = record.outputs.get("segmentation")
            record.output = output_dir / segmentation if segmentation else None
            skipped += 1
        elif outputs.needs_dicom and not isinstance(case.channels[0], DicomSeries):
            record.status = "failed"
            record.error = (f"--output-format {' '.join(f for f in outputs.formats if f != 'nifti')} needs a DICOM "
                            f"series as input, got {case.channels[0]}; expected a folder of DICOM slice files, or "
                            "--output-format nifti")
            log.error("%s: %s", case.case_id, record.error)
        elif _foreign_output(case, manifest, output_dir, overwrite):
            record.status = "failed"
            record.error = (f"{output_dir / case.case_id}.nii.gz exists and this folder's manifest does not say "
                            "segtrt wrote it; refusing to replace it (use --overwrite, or another -o folder)")
            log.error("%s: %s", case.case_id, record.error)
        else:
            to_run.append(case)
        records.append(record)
    if manifest.existed and not overwrite:
        log.info("resuming from %s: %d of %d case(s) done before are skipped (--overwrite recomputes them)",
                 manifest.path, skipped, len(cases))
    return records, to_run, {"manifest": str(manifest.path), "resumed": manifest.existed and not overwrite,
                             "skipped": skipped, "overwrite": overwrite}


def _run_cases(report, to_run, manifest, model, runners, settings, batch, device, listener, writer) -> None:
    if not to_run:
        report.state = "finished"
        report.write()
        return
    by_id = {record.case_id: record for record in report.cases}
    position = {record.case_id: i for i, record in enumerate(report.cases)}
    workers = batch.io_workers or default_workers()
    limits = Limits(read_workers=workers, read_ahead=workers, write_workers=workers)
    steps = CaseSteps(report.path.parent, by_id, writer)

    def finished(index: int, record: CaseRecord) -> None:
        by_id[record.case_id] = record
        report.cases[position[record.case_id]] = record
        manifest.append(manifest_record(to_run[index], record, model.identity, report.model["settings_key"]))
        report.write()
        if listener is not None:
            listener.case_finished(record, report)

    predictor = Predictor(model.folder, runners, settings, model.mirror_axes, device)
    predictor, while_compiling = _with_eager_start(predictor, model, settings, batch, report.backend, device)
    steps.predictor = predictor

    def prepare() -> None:  # runs while the first images are read
        predictor.activate()
        report.startup.update(predictor.startup_seconds())

    try:
        if settings.overlap_io:
            run = run_scheduled(to_run, steps.read, steps.predict, steps.write, steps.failed, finished, limits,
                                prepare)
        else:
            run = run_in_sequence(to_run, steps.read, steps.predict, steps.write, steps.failed, finished, prepare)
    except BaseException as exc:
        report.state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        report.write()
        raise
    finally:
        predictor.close()
        # after the first call: how the compiled network started (warm or cold cache), first-call seconds
        report.backend["runner"] = runners[0].describe()
        if isinstance(predictor, EagerUntilCompiled):
            report.backend["while_compiling"] = predictor.summary()
        elif while_compiling is not None:
            report.backend["while_compiling"] = while_compiling
    threads = ({"read_workers": limits.read_workers, "read_ahead": limits.read_ahead,
                "write_workers": limits.write_workers} if settings.overlap_io else {})
    report.io = {"overlapped": settings.overlap_io, **threads,
                 "waited_seconds": {k: round(v, 3) for k, v in run.waited.items()},
                 "started_epoch": run.started_epoch,
                 "timeline": [list(entry) for entry in run.timeline]}
    report.state = "finished"
    report.write()


def _with_eager_start(predictor: Predictor, model, settings: PredictSettings, batch: BatchSettings, backend: dict,
                      device) -> tuple["Predictor | EagerUntilCompiled", dict | None]:
    """``--while-compiling eager``: the compiled predictor paired with an eager one (segtrt.batch.handover)
    where that can run; otherwise the predictor itself and, for a compiled run, why it waits."""
    if settings.compile == "off":
        return predictor, None
    reason = "--while-compiling wait" if batch.while_compiling == "wait" else handover_reason(
        settings, backend.get("backend", settings.backend), device)
    if reason is not None:
        if batch.while_compiling == "eager":
            log.warning("--while-compiling eager does not apply here (%s); the first case waits for the compiled "
                        "network", reason)
        return predictor, {"mode": "wait", "reason": reason}
    eager_settings = replace(settings, compile="off", cuda_graph=False, channels_last="auto", freeze="auto",
                             half_weights="auto", precompile="auto")
    # a copy of each network: the compiled runner changes its module's layout when it activates
    eager_runners = [torch_runner(copy.deepcopy(network), eager_settings, device) for network in model.networks]
    log.info("predicting with the eager network while the compiled one gets ready (--while-compiling eager)")
    eager = Predictor(model.folder, eager_runners, eager_settings, model.mirror_axes, device)
    return EagerUntilCompiled(predictor, eager), None


class CaseSteps:
    """The predictor's per-case steps as the scheduler calls them."""

    def __init__(self, output_dir: Path, records: dict[str, CaseRecord], writer: "CaseWriter") -> None:
        self.output_dir, self.records, self.writer = output_dir, records, writer
        self.predictor: Predictor | None = None

    def read(self, case: Case) -> tuple[np.ndarray, Geometry, float]:
        return self.predictor.read_case(case)

    def predict(self, case: Case, loaded) -> tuple[Prediction, Geometry, np.ndarray]:
        """The prediction, its geometry and the image (statistics and previews need it when writing)."""
        image, geometry, read_seconds = loaded
        if isinstance(self.predictor, EagerUntilCompiled):
            prediction = self.predictor.predict_image(image, geometry.spacing, case_id=case.case_id)
        else:
            prediction = self.predictor.predict_image(image, geometry.spacing)
        prediction.seconds["read"] = read_seconds
        return prediction, geometry, image

    def write(self, case: Case, predicted) -> CaseRecord:
        prediction, geometry, image = predicted
        return self.writer.write(case, prediction, geometry, image, self.predictor, self.records[case.case_id])

    def failed(self, case: Case, exc: Exception) -> CaseRecord:
        """A user error is one log line; anything else logs its traceback."""
        if isinstance(exc, SegtrtError):
            log.error("%s: %s", case.case_id, exc)
            error = str(exc)
        else:
            log.error("%s: unexpected error", case.case_id, exc_info=exc)
            error = f"{type(exc).__name__}: {exc}"
        return CaseRecord(case.case_id, "failed", error=error, inputs=self.records[case.case_id].inputs)


class CaseWriter:
    """Writes one case's files: the NIfTI label map (and probabilities) through the predictor, then what
    ``segtrt.outputs`` adds (legend, DICOM SEG, RTSTRUCT, statistics, preview). Runs on writer threads."""

    def __init__(self, output_dir: Path, options: OutputOptions, model) -> None:
        from segtrt import __version__

        folder = model.folder
        self.output_dir, self.options = output_dir, options
        self.label_names = label_names_from_dataset(folder.dataset)
        self.description = ModelDescription(
            name=str(folder.dataset.get("name", folder.path.name)), identity=model.identity,
            configuration=folder.configuration_name, folds=tuple(str(f) for f in folder.folds), version=__version__)

    def write(self, case: Case, prediction: Prediction, geometry: Geometry, image: np.ndarray,
              predictor: Predictor, previous: CaseRecord) -> CaseRecord:
        start = time.perf_counter()
        seconds = dict(prediction.seconds)
        outputs: dict[str, str] = {}
        output = probabilities = None
        if "nifti" in self.options.formats:
            result = predictor.write_case(case, prediction, geometry, self.output_dir)
            output, probabilities, seconds = result.output, result.probabilities, result.seconds
            outputs["segmentation"] = _relative(output, self.output_dir)
            if probabilities is not None:
                outputs["probabilities"] = _relative(probabilities, self.output_dir)
        channel = case.channels[0]
        extra = write_case_outputs(self.output_dir / case.case_id, prediction.labels, image, geometry,
                                   self.label_names, self.options, self.description,
                                   dicom_files=channel.files if isinstance(channel, DicomSeries) else None,
                                   case_id=case.case_id)
        outputs.update({kind: _relative(path, self.output_dir) for kind, path in extra.files.items()})
        seconds["write"] = time.perf_counter() - start
        return CaseRecord(case.case_id, "done", output=output, outputs=outputs, probabilities=probabilities,
                          seconds=seconds, inputs=previous.inputs, aggregation=prediction.aggregation,
                          statistics=extra.statistics, warnings=list(extra.warnings) + _nonfinite_warning(prediction))


def _nonfinite_warning(prediction: Prediction) -> list[str]:
    """The report's record of NaN/Inf input voxels set to 0 (``--nonfinite zero``; otherwise the case fails)."""
    count = prediction.replaced_nonfinite
    return [f"{count} NaN/Inf input voxel(s) set to 0 (--nonfinite zero)"] if count else []


def _write_batch_outputs(report: BatchReport, options: OutputOptions) -> None:
    """The batch's QA page (index.html) and statistics CSV, listed in the report."""
    folder = report.path.parent
    summaries = [BatchCaseSummary(c.case_id, c.status, c.error or c.reason,
                                  {k: folder / v for k, v in c.outputs.items()}, c.statistics, tuple(c.warnings))
                 for c in report.cases if c.status != "pending"]
    try:
        written = write_batch_outputs(folder, summaries, options)
    except SegtrtError as error:  # the cases are written; say why the page is missing
        log.error("batch outputs not written: %s", error)
        report.batch_outputs = {"error": str(error)}
    else:
        report.batch_outputs = {kind: _relative(path, folder) for kind, path in written.items()}
    report.write()


def manifest_record(case: Case, record: CaseRecord, identity: str, key: str) -> dict:
    try:
        inputs = fingerprint(case)
    except OSError:
        inputs = []
    return {"case": case.case_id, "status": record.status, "inputs": inputs, "model": identity,
            "settings_key": key, "outputs": record.outputs, "error": record.error,
            "seconds": {k: round(v, 4) for k, v in record.seconds.items()}}


def _relative(path: Path, folder: Path) -> str:
    return Path(path).relative_to(folder).as_posix()


def _foreign_output(case: Case, manifest: Manifest, output_dir: Path, overwrite: bool) -> bool:
    """An output file exists that no run recorded in this folder's manifest wrote (never replaced silently)."""
    if overwrite or case.case_id in manifest.records:
        return False
    return (output_dir / f"{case.case_id}.nii.gz").exists()


def _discovery_entry(found: Discovery) -> dict:
    return {"cases": len(found.cases), "skipped": [s.to_dict() for s in found.skipped],
            "renamed": [r.to_dict() for r in found.renamed]}


def _refuse_overwriting_inputs(cases: list[Case], output_dir: Path) -> None:
    inputs = {p.resolve() for case in cases for p in case.input_files()}
    for case in cases:
        target = (output_dir / f"{case.case_id}.nii.gz").resolve()
        if target in inputs:
            raise InputImageError(f"the output {target} would overwrite an input; choose another -o folder")
