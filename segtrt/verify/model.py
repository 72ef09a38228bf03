"""Verify a whole model folder: every fold's backend against torch float32, on synthetic patches or on
patches cut from the user's scans, and (with scans) the whole-case label maps (what ``segtrt verify``
and ``segtrt.testing.assert_model_matches`` run).

This module sits above the runners, the exporter and the predictor (it builds the runners under test);
the comparison math below it (``segtrt.verify.logits`` and friends) knows nothing about backends.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from segtrt.config import PRECISIONS, VERIFY_BACKENDS, PredictSettings
from segtrt.errors import InputImageError, SettingsError
from segtrt.verify.labels import CasesComparison, compare_case_labels
from segtrt.verify.patches import random_patches, scan_patches
from segtrt.verify.reference import exact_float32
from segtrt.verify.report import VerifyReport, compare_folds
from segtrt.verify.tolerance import Tolerance, tolerance_for

log = logging.getLogger(__name__)

Images = dict[Path, tuple[np.ndarray, tuple[float, ...]]]


@dataclass(frozen=True)
class VerifyOptions:
    """What to compare. backend/precision: the candidate (the reference is always torch fp32, TF32 off).

    provider: ONNX Runtime provider (None: cpu on the CPU, cuda on a GPU). onnx: existing ONNX files, one
    per fold, instead of a fresh export. patches: patch batches (per scan when scans are given) of
    ``batch`` patches each. tta: mirroring in the whole-case comparison. tolerance: None = the defaults
    for ``precision`` (segtrt.verify.tolerance: TOLERANCES on synthetic patches, SCAN_TOLERANCES on scan
    patches); a Tolerance given here is used for both.
    """

    backend: str = "onnxruntime"
    precision: str = "fp32"
    provider: str | None = None
    onnx: tuple[Path, ...] | None = None
    patches: int = 4
    batch: int = 1
    tta: bool = False
    seed: int = 0
    tolerance: Tolerance | None = None

    def __post_init__(self) -> None:
        if self.backend not in VERIFY_BACKENDS:
            raise SettingsError(f"backend (--backend) must be one of {', '.join(VERIFY_BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"precision (--precision) must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("patches", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"{name} (--{name}) must be a whole number >= 1, got {value!r}")

    def limits(self, patches: str) -> Tolerance:
        """The tolerance for 'synthetic' or 'scan' patches."""
        return self.tolerance or tolerance_for(self.precision, patches)

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} vs torch fp32"


def verify_model_folder(
    model_dir: str | Path,
    scans: Sequence[str | Path] = (),
    options: VerifyOptions | None = None,
    *,
    fold: int | str | None = None,
    configuration: str | None = None,
    checkpoint_name: str = "checkpoint_final.pth",
    trust: bool = False,
    device: str = "auto",
) -> VerifyReport:
    """Load ``model_dir`` (its folds, or ``fold``) on ``device`` and run :func:`verify_model`."""
    from segtrt.devices import resolve_device
    from segtrt.nnunet import load_model

    torch_device, _ = resolve_device(device)
    folds = None if fold is None else [fold]
    model = load_model(model_dir, configuration=configuration, folds=folds, checkpoint_name=checkpoint_name,
                       trust=trust, device=torch_device)
    return verify_model(model, [Path(s) for s in scans], options or VerifyOptions(), torch_device)


def verify_model(model: Any, scans: Sequence[Path], options: VerifyOptions, device: torch.device) -> VerifyReport:
    """Every fold of a loaded model (``segtrt.nnunet.LoadedModel``) on ``options.backend`` vs torch fp32.

    Always on synthetic patches (tight limits); with scans also on patches cut from them (limits measured
    on real scans) and on the whole cases' label maps.
    """
    images = read_scans(model, scans) if scans else {}  # before the export: a bad scan fails fast
    with tempfile.TemporaryDirectory(prefix="segtrt-verify-") as work:
        runners = candidate_runners(model, options, device, Path(work))
        results = compare_folds(model.networks, runners, verification_patches(model, options, device, {}),
                                options.limits("synthetic"), labels=model.folder.labels,
                                label=f"{options.label}, synthetic patches")
        if images:
            results += compare_folds(model.networks, runners, verification_patches(model, options, device, images),
                                     options.limits("scan"), labels=model.folder.labels,
                                     label=f"{options.label}, scan patches")
        cases = compare_cases(model, runners, options, device, images) if images else None
    return VerifyReport(options.backend, options.precision, str(device), tuple(model.folder.folds),
                        tuple(results), cases)


def candidate_runners(model: Any, options: VerifyOptions, device: torch.device, work: Path) -> list:
    """The runners under test, one per fold (ONNX files exported into ``work`` unless given)."""
    if options.backend != "onnxruntime":
        from segtrt.backends import create_runners

        settings = PredictSettings(device=str(device), backend=options.backend, precision=options.precision,
                                   batch_size=options.batch)
        return create_runners(model, settings, device)[0]
    from segtrt.runners.onnxruntime_runner import OnnxRuntimeRunner

    paths = onnx_files(model, options, work)
    return [OnnxRuntimeRunner(path, device, provider=options.provider) for path in paths]


def onnx_files(model: Any, options: VerifyOptions, work: Path) -> list[Path]:
    """``options.onnx`` checked against the model (one per fold, same precision), or fresh exports."""
    from segtrt.export import export_loaded_model, read_metadata

    if options.onnx is None:
        results = export_loaded_model(model, work / "model.onnx", dynamic_batch=True, precision=options.precision,
                                      check=False)
        return [r.path for r in results]
    if len(options.onnx) != len(model.networks):
        raise SettingsError(f"got {len(options.onnx)} --onnx file(s) for folds {', '.join(model.folder.folds)}; "
                            "give one per fold, in fold order, or select a fold with -f")
    for path in options.onnx:
        stored = read_metadata(path).get("precision")
        if stored is not None and stored != options.precision:
            raise SettingsError(f"{path} is an {stored} export but --precision {options.precision} was asked for")
    return list(options.onnx)


def read_scans(model: Any, scans: Sequence[Path]) -> Images:
    """(C, Z, Y, X) image and (z, y, x) spacing of every case found in ``scans`` (as ``segtrt predict`` finds
    them, segtrt.batch.discovery), keyed by case id (as a Path, which compare_case_labels takes), in sorted order."""
    from segtrt.batch.discovery import ModelInputs, discover
    from segtrt.io import read_image

    folder = model.folder
    found = discover(list(scans), ModelInputs(folder.num_input_channels, tuple(folder.channel_names)))
    if not found.cases:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in found.skipped) or "nothing found"
        raise InputImageError(f"no case to verify in {', '.join(map(str, scans))} ({reasons}); expected image "
                              "files or DICOM series the model can read")
    images = {}
    for case in sorted(found.cases, key=lambda c: c.case_id):
        image, geometry = read_image(case.channels)
        images[Path(case.case_id)] = (image, tuple(geometry.spacing))
    return images


def verification_patches(model: Any, options: VerifyOptions, device: torch.device, images: Images) -> list[torch.Tensor]:
    """(N, C, Z, Y, X) float32 batches: synthetic without scans, else cut from each preprocessed scan."""
    folder = model.folder
    if not images:
        return random_patches(options.patches, folder.num_input_channels, folder.patch_size, batch=options.batch,
                              seed=options.seed, device=device)
    from segtrt.preprocess import PreprocessPlan, preprocess

    plan = PreprocessPlan.from_nnunet(folder.plans, folder.configuration)
    patches = []
    for image, spacing in images.values():
        pre = preprocess(torch.from_numpy(image).to(device), spacing, plan)
        single = scan_patches(pre.data, folder.patch_size, options.patches * options.batch, seed=options.seed)
        patches += [torch.cat(single[i:i + options.batch]) for i in range(0, len(single), options.batch)]
    return patches


def compare_cases(model: Any, runners: list, options: VerifyOptions, device: torch.device,
                  images: Images) -> CasesComparison:
    """Whole-case label maps: the predictor with torch fp32 (TF32 off) vs with the runners under test."""
    from segtrt.predictor import Predictor
    from segtrt.runners.torch_runner import TorchRunner

    settings = PredictSettings(device=str(device), mirror=options.tta, batch_size=options.batch,
                               precision=options.precision, backend=options.backend)
    references = [TorchRunner(net, device, "fp32") for net in model.networks]
    with Predictor(model.folder, references, settings, model.mirror_axes, device) as reference, \
            Predictor(model.folder, runners, settings, model.mirror_axes, device) as candidate:

        def reference_labels(case_id: Path) -> np.ndarray:
            with exact_float32():
                return reference.predict_image(*images[case_id]).labels

        def candidate_labels(case_id: Path) -> np.ndarray:
            return candidate.predict_image(*images[case_id]).labels

        return compare_case_labels(reference_labels, candidate_labels, list(images),
                                   min_agreement=options.limits("scan").min_argmax_agreement,
                                   labels=model.folder.labels, label=options.label)
