"""Where a batch runs: this process's one device, several local devices (``--devices``) or Ray actors
(``--ray``). Sits above segtrt.batch and segtrt.scaleout so that neither imports the other's caller;
Ray is imported only when ``--ray`` is given."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from segtrt.batch.job import BatchListener, run_batch
from segtrt.batch.report import BatchReport
from segtrt.config import BatchSettings, PredictSettings, ScaleSettings
from segtrt.outputs import OutputOptions


def open_workers(scale: ScaleSettings, model_dir: Path, settings: PredictSettings):
    """The workers of ``--devices`` (segtrt.batch.multi_device) or ``--ray`` (segtrt.scaleout; imports Ray),
    or None for the one-device path, which imports neither."""
    if scale.devices:
        from segtrt.batch.multi_device import DeviceWorkers

        return DeviceWorkers(scale.devices, model_dir, settings)
    if scale.ray_address is not None:
        from segtrt.scaleout import RayWorkers

        return RayWorkers(scale, model_dir, settings)
    return None


def predict_batch(
    model_dir: Path, inputs: Sequence[Path], output_dir: Path, settings: PredictSettings,
    batch: BatchSettings = BatchSettings(), listener: BatchListener | None = None,
    outputs: OutputOptions = OutputOptions(), scale: ScaleSettings = ScaleSettings(),
) -> BatchReport:
    """segtrt.batch.run_batch on the workers ``scale`` asks for (see :func:`open_workers`)."""
    workers = open_workers(scale, model_dir, settings)
    return run_batch(model_dir, inputs, output_dir, settings, batch, listener, outputs, scale, workers)
