"""Accuracy checks: a backend's logits against the torch float32 reference, and whole-case labels.

Three levels:

* patches: ``compare_runners(reference, candidate, patches, tolerance)`` feeds the same
  (N, C, Z, Y, X) float32 patches to both callables and returns a ``LogitComparison`` (max/mean
  absolute and scale-relative logit difference, the assert_allclose criterion, argmax agreement,
  per-label Dice of the argmax maps). ``TOLERANCES`` holds the limits per precision and the
  measurements they come from.
* cases: ``compare_case_labels(reference, candidate, cases)`` takes two label producers
  ``Callable[[Path], np.ndarray]`` (e.g. the sliding-window predictor on two backends) and compares
  the final label maps per case.
* models: ``compare_folds`` runs every fold's runner against its torch network; ``scan_patches``
  cuts test patches out of a preprocessed scan; ``VerifyReport`` gathers it all for ``segtrt verify``.

Results are objects: ``bool(result)`` is "passed", ``str(result)`` is a table that shows the
limits, ``result.to_dict()`` is JSON-serialisable. Statistics are computed with torch on the
device the logits live on; only scalars come back to the host.

Modules: ``tolerance`` (limits per precision), ``logits`` (patch-level comparison math),
``labels`` (label-map agreement and Dice, whole cases), ``reference`` (the torch float32
reference), ``patches`` (test inputs), ``report`` (fold-level comparison and ``VerifyReport``).
Everything public is importable from ``segtrt.verify``.
"""

from segtrt.verify.labels import (
    CaseComparison,
    CasesComparison,
    LabelFn,
    compare_case_labels,
    compare_label_maps,
    dice_from_confusion,
)
from segtrt.verify.logits import LogitComparison, LogitFn, compare_logits, compare_runners
from segtrt.verify.patches import random_patches, scan_patches
from segtrt.verify.reference import exact_float32, torch_reference
from segtrt.verify.report import VerifyReport, compare_folds
from segtrt.verify.tolerance import SCAN_TOLERANCES, TOLERANCES, Tolerance, tolerance_for

__all__ = [
    "SCAN_TOLERANCES", "TOLERANCES", "CaseComparison", "CasesComparison", "LabelFn", "LogitComparison", "LogitFn", "Tolerance",
    "VerifyReport", "compare_case_labels", "compare_folds", "compare_label_maps", "compare_logits",
    "compare_runners", "dice_from_confusion", "exact_float32", "random_patches", "scan_patches",
    "tolerance_for", "torch_reference",
]
