"""Orchestration for one model: image -> preprocessing -> sliding window -> export, on one device.

The predictor takes runners (one per fold) and never knows which backend they use. Arrays are
channels first in array order (C, Z, Y, X) with spacing (z, y, x) in mm, as read by ``segtrt.io``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from segtrt.config import PredictSettings
from segtrt.errors import DeviceMemoryError, InputImageError, NonFiniteError, one_line
from segtrt.io import Case, Geometry, read_image, write_probabilities, write_segmentation
from segtrt.io.nonfinite import apply_nonfinite_policy
from segtrt.nnunet import ModelFolder
from segtrt.postprocess import logits_to_probabilities, logits_to_segmentation
from segtrt.preprocess import PreprocessPlan, preprocess
from segtrt.runners.base import Runner
from segtrt.sliding import SlidingWindowOptions, sliding_window_logits, streamed_window_logits
from segtrt.streaming import StreamChoice, choose_streaming, padded_shape
from segtrt.timing import StageTimer
from segtrt.transfer import Downloader, Uploader

log = logging.getLogger(__name__)

ACCUMULATE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class Prediction:
    """labels (Z, Y, X) integer in the input's array order; probabilities (K, Z, Y, X) or None.

    aggregation: whole-volume or z-streamed logits, and why (segtrt.streaming).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    seconds: dict[str, float] = field(default_factory=dict)
    windows: int = 0
    aggregation: StreamChoice | None = None
    replaced_nonfinite: int = 0


@dataclass
class CaseResult:
    """What happened to one case, for the run report."""

    case_id: str
    output: Path | None = None
    probabilities: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    aggregation: StreamChoice | None = None
    #: NaN/Inf input voxels set to 0 (only with ``nonfinite="zero"``; otherwise such a case fails).
    replaced_nonfinite: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class Predictor:
    """Predicts cases with one model folder and one runner per fold, all on ``device``."""

    def __init__(
        self,
        folder: ModelFolder,
        runners: Sequence[Runner],
        settings: PredictSettings,
        mirror_axes: tuple[int, ...],
        device: torch.device,
    ) -> None:
        self.folder = folder
        self.runners = list(runners)
        self.settings = settings
        self.device = device
        self.plan = PreprocessPlan.from_nnunet(folder.plans, folder.configuration)
        self.uploader = Uploader(device)
        self.downloader = Downloader(device)
        self._active = contextlib.ExitStack()
        self._startup: dict[str, float | str] = {}
        self._warmed: list[Runner] = []
        self.options = SlidingWindowOptions(
            patch_size=tuple(int(p) for p in folder.patch_size),
            num_classes=folder.num_segmentation_heads,
            step_size=settings.step_size,
            mirror_axes=tuple(mirror_axes) if settings.mirror else (),
            batch_size=settings.batch_size,
            # flips of a window group go through in calls of at most batch_size patches, so device
            # memory follows --batch-size rather than batch_size x 8 flips
            max_call_batch=_smallest([settings.batch_size, *(r.max_batch_size for r in self.runners)]),
            fixed_call_batch=_smallest(r.fixed_batch_size for r in self.runners),
            accumulate_dtype=ACCUMULATE_DTYPES[settings.accumulate_dtype],
        )

    def __enter__(self) -> "Predictor":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    def activate(self) -> "Predictor":
        """Activate every runner (network to the device, engine load); safe to call twice. If one fails,
        the ones activated before it are deactivated again (in reverse order) before the error propagates.

        A runner whose first call is costly (``Runner.costly_first_call``: compiling, loading compiled
        kernels, capturing a CUDA graph) is called once here on a zero batch of the shape every call has,
        so that cost is paid while a batch job reads its first images rather than in the first case."""
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            for runner in self.runners:
                runner.activate()
                stack.callback(runner.deactivate)
            self._active = stack.pop_all()
        self._startup["activate_seconds"] = round(time.perf_counter() - start, 3)
        self._warm_up()
        return self

    def warm_up_shape(self) -> tuple[int, ...]:
        """(N, C, Z, Y, X) of the runners' calls: the static or largest call batch, one patch each."""
        batch = self.options.fixed_call_batch or self.options.max_call_batch or self.settings.batch_size
        return (batch, self.folder.num_input_channels, *self.options.patch_size)

    def _warm_up(self) -> None:
        """The costly first calls, made now (once per runner). A failure is not fatal: it is logged, kept in
        ``startup_seconds()['warm_up']`` and the first case makes the call instead (and reports its error)."""
        pending = [r for r in self.runners if r.costly_first_call and r not in self._warmed]
        if not pending:
            return
        start = time.perf_counter()
        try:
            with torch.inference_mode():  # as predict_image's batches: the same compiled entry serves both
                batch = torch.zeros(self.warm_up_shape(), dtype=torch.float32, device=self.device)
                for runner in pending:
                    runner.infer(batch)
                    self._warmed.append(runner)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 - explicit: logged, reported, retried by the first case
            log.warning("warming the network up before the first case failed (%s); the first case makes that "
                        "call instead", one_line(exc))
            self._startup["warm_up"] = f"failed: {one_line(exc)}"
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        else:
            self._startup["warm_up"] = "done"
        self._startup["warm_up_seconds"] = round(time.perf_counter() - start, 3)

    def close(self) -> None:
        """Deactivate the runners in reverse order of activation (each restores what it changed, e.g.
        cudnn.benchmark, so the process-wide state ends as it was before the first), free the transfer buffers."""
        try:
            self._active.close()
        finally:
            self.uploader.release()
            self.downloader.release()

    def startup_seconds(self) -> dict[str, float | str]:
        """Seconds of runner activation and of the warm-up call (``warm_up``: done, or why it failed), paid
        once per process; without a warm-up a compiled network compiles, or loads its cached kernels, in the
        first case (see its network seconds)."""
        return dict(self._startup)

    def predict_image(
        self, image: np.ndarray, spacing: Sequence[float], progress: Callable[[int, int], None] | None = None
    ) -> Prediction:
        """Segment one image: (C, Z, Y, X) float32 array, spacing (z, y, x) mm.

        NaN/Inf voxels raise NonFiniteError, or are set to 0 in a copy with ``settings.nonfinite ==
        "zero"`` (counted in ``Prediction.replaced_nonfinite``). Logits and probabilities are checked
        finite before they are returned (NonFiniteError otherwise), so nothing non-finite is written.
        """
        self._check_image(image, spacing)
        image, replaced = apply_nonfinite_policy(image, self.settings.nonfinite)
        try:
            with torch.inference_mode():
                prediction = self._predict_image(image, spacing, progress)
        except torch.OutOfMemoryError as exc:
            raise DeviceMemoryError(self._out_of_memory_advice(image.shape)) from exc
        prediction.replaced_nonfinite = replaced
        return prediction

    def _out_of_memory_advice(self, shape: Sequence[int]) -> str:
        """One line for a case that ran out of device memory: what it was, and the settings that use less."""
        hints = []
        if self.settings.batch_size > 1:
            hints.append(f"--batch-size {max(1, self.settings.batch_size // 2)}")
        if self.settings.stream != "on":
            hints.append("--stream on")
        if self.settings.accumulate_dtype != "float16":
            hints.append("--accumulate float16")
        advice = f"; try {', '.join(hints)}" if hints else ""
        return (f"out of {self.device} memory for an image of {tuple(int(s) for s in shape)} voxels with "
                f"{self.options.num_classes} classes (batch size {self.settings.batch_size}, "
                f"stream={self.settings.stream}){advice}")

    def _predict_image(
        self, image: np.ndarray, spacing: Sequence[float], progress: Callable[[int, int], None] | None
    ) -> Prediction:
        timer = StageTimer(self.device)
        with timer.stage("upload"):
            tensor = self.uploader(image)
        with timer.stage("preprocess"):
            pre = preprocess(tensor, tuple(float(s) for s in spacing), self.plan)
            del tensor
        with timer.stage("network"):
            logits, aggregation = self._sliding_window(pre.data, progress)
            _check_finite(logits, "logits", self._accumulate_hint())
        with timer.stage("export"):
            # streamed logits live on the host: export fetches a few channels at a time to the device
            regions = self.folder.regions_class_order
            labels = self.downloader(logits_to_segmentation(logits, pre, self.plan, regions, device=self.device))
            probabilities = None
            if self.settings.save_probabilities:
                probs = logits_to_probabilities(logits, pre, self.plan, regions, device=self.device)
                _check_finite(probs, "probabilities", "")
                probabilities = probs.float().cpu().numpy()
        return Prediction(labels, probabilities, timer.seconds, aggregation=aggregation)

    def _sliding_window(
        self, data: torch.Tensor, progress: Callable[[int, int], None] | None
    ) -> tuple[torch.Tensor, StreamChoice]:
        """Logits (K, z, y, x) of ``data`` (C, z, y, x): on the device, or float16 on the host if streamed."""
        choice = choose_streaming(self.settings.stream, self.options.num_classes,
                                  padded_shape(data.shape[1:], self.options.patch_size),
                                  self.options.accumulate_dtype, self.device)
        log.debug("aggregation: %s", choice.reason)
        aggregate = streamed_window_logits if choice.streamed else sliding_window_logits
        return aggregate(data, self.runners, self.options, progress), choice

    def predict_case(
        self, case: Case, output_dir: Path, progress: Callable[[int, int], None] | None = None
    ) -> CaseResult:
        """Read, segment and write one case in sequence; the output is ``output_dir/<case_id>.nii.gz``."""
        image, geometry, read_seconds = self.read_case(case)
        prediction = self.predict_image(image, geometry.spacing, progress)
        del image
        prediction.seconds["read"] = read_seconds
        return self.write_case(case, prediction, geometry, output_dir)

    def read_case(self, case: Case) -> tuple[np.ndarray, Geometry, float]:
        """Read ``case``'s channels: the (C, Z, Y, X) image, its geometry, and the wall seconds it took.

        Host only (no device, no runner), so it may run on another thread than :meth:`predict_image`.
        The caller owns the returned array.
        """
        start = time.perf_counter()
        image, geometry = read_image(case.channels)
        return image, geometry, time.perf_counter() - start

    def write_case(self, case: Case, prediction: Prediction, geometry: Geometry, output_dir: Path) -> CaseResult:
        """Write ``prediction`` as ``output_dir/<case_id>.nii.gz`` (and ``.npz`` probabilities if present).

        Returns the case's result; its seconds are ``prediction.seconds`` plus 'write' (wall seconds).
        Host only, so it may run on another thread; each file is written atomically (segtrt.io.writers).
        """
        start = time.perf_counter()
        result = CaseResult(case.case_id, seconds=dict(prediction.seconds), aggregation=prediction.aggregation,
                            replaced_nonfinite=prediction.replaced_nonfinite)
        result.output = write_segmentation(output_dir / f"{case.case_id}.nii.gz", prediction.labels, geometry)
        if prediction.probabilities is not None:
            result.probabilities = write_probabilities(output_dir / f"{case.case_id}.npz", prediction.probabilities)
        result.seconds["write"] = time.perf_counter() - start
        return result

    def _check_image(self, image: np.ndarray, spacing: Sequence[float]) -> None:
        """InputImageError unless ``image`` is (C, Z, Y, X) real-valued with the model's C, every axis
        non-empty, and ``spacing`` three positive finite mm values."""
        if image.ndim != 4 or 0 in image.shape:
            raise InputImageError(f"the image array has shape {tuple(image.shape)}; expected (C, Z, Y, X) with "
                                  "at least one voxel per axis")
        if np.iscomplexobj(image) or not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_):
            raise InputImageError(f"the image array has dtype {image.dtype}; expected real intensities")
        values = [float(s) for s in spacing]
        if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
            raise InputImageError(f"the spacing {tuple(spacing)} is not three positive (z, y, x) mm values")
        expected = self.folder.num_input_channels
        if image.shape[0] != expected:
            names = ", ".join(self.folder.channel_names)
            raise InputImageError(
                f"the model expects {expected} input channel(s) ({names}), got {image.shape[0]}"
            )

    def _accumulate_hint(self) -> str:
        if self.options.accumulate_dtype == torch.float16:
            return " (the float16 accumulator overflowed? try --accumulate float32)"
        return " (the network produced them: check the model and --precision)"


def _check_finite(values: torch.Tensor, what: str, hint: str) -> None:
    """NonFiniteError when ``values`` (K, ...) on the device or the host hold NaN or Inf: never write them.

    One class at a time, so the check needs a boolean mask of one class, not of all of them.
    """
    bad = sum(int((~torch.isfinite(channel)).sum()) for channel in values if not bool(torch.isfinite(channel).all()))
    if bad:
        raise NonFiniteError(f"{bad} of {values.numel()} {what} are NaN or infinite{hint}; nothing was written")


def _smallest(values) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None
