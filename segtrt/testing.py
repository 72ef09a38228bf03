"""Helpers for users' own accuracy regression tests (pytest or any test runner).

``assert_model_matches`` is ``segtrt verify`` as one call: it runs every fold of a model folder on a
backend and on the torch float32 reference (TF32 off), on patches cut from the given scans (or on
synthetic patches without scans) and, with scans, compares the whole-case label maps; it raises
AssertionError with the full comparison table when anything is past its tolerance::

    # tests/test_my_model.py
    from segtrt.testing import assert_model_matches

    def test_onnx_export_matches_torch():
        assert_model_matches("models/liver", ["tests/data/case_0000.nii.gz"], backend="onnxruntime")

The tolerances are segtrt's measured defaults per precision (README, "Tolerance policy"); pass a
``segtrt.verify.Tolerance`` to tighten or loosen them for your model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from segtrt.verify.model import VerifyOptions, verify_model_folder
from segtrt.verify.report import VerifyReport
from segtrt.verify.tolerance import Tolerance


def assert_model_matches(
    model_dir: str | Path,
    scans: Sequence[str | Path] = (),
    *,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    device: str = "auto",
    fold: int | str | None = None,
    onnx: Sequence[str | Path] | None = None,
    patches: int = 2,
    tta: bool = False,
    tolerance: Tolerance | None = None,
    trust_checkpoint: bool = False,
) -> VerifyReport:
    """Assert that ``backend`` at ``precision`` reproduces torch fp32 on the model; returns the report.

    onnx: existing ONNX files (one per fold) to test instead of a fresh export, e.g. the files you
    deploy. patches: patch batches per scan (or synthetic batches without scans).
    """
    options = VerifyOptions(backend=backend, precision=precision, onnx=tuple(Path(p) for p in onnx) if onnx else None,
                            patches=patches, tta=tta, tolerance=tolerance)
    report = verify_model_folder(model_dir, scans, options, fold=fold, trust=trust_checkpoint, device=device)
    if not report.passed:
        raise AssertionError(f"{options.label} on {report.device}: past tolerance for {model_dir}\n\n{report}")
    return report
