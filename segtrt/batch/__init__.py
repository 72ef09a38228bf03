"""The batch job: find cases in folders and trees, resume from a manifest, keep the device busy with
parallel file IO, and report every case (one job per module: discovery, series, naming, manifest,
scheduler, report, job)."""

from segtrt.batch.discovery import Discovery, ModelInputs, Skipped, discover
from segtrt.batch.job import result_settings, run_batch
from segtrt.batch.manifest import MANIFEST_NAME, Manifest
from segtrt.batch.report import REPORT_NAME, BatchReport, CaseRecord
from segtrt.batch.scheduler import Limits, run_scheduled
from segtrt.batch.series import SeriesFilter

__all__ = [
    "MANIFEST_NAME", "REPORT_NAME", "BatchReport", "CaseRecord", "Discovery", "Limits", "Manifest", "ModelInputs",
    "SeriesFilter", "Skipped", "discover", "result_settings", "run_batch", "run_scheduled",
]
