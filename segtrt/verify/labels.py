"""Label-map comparison (numpy): per-label Dice from a confusion matrix, voxel agreement of two
(z, y, x) label maps, and whole-case comparisons of two label producers (``compare_case_labels``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from segtrt.errors import SegtrtError

LabelFn = Callable[[Path], np.ndarray]


def dice_from_confusion(confusion: np.ndarray, labels: Mapping[str, int] | None = None) -> dict[str, float | None]:
    """Per-label Dice from a (K, K) confusion matrix (rows: reference, columns: candidate).

    labels maps names to channel indices (nnU-Net's dataset.json ``labels``); other channels are
    named by their index. None where a label is absent from both maps.
    """
    k = confusion.shape[0]
    names = {i: str(i) for i in range(k)}
    for name, index in (labels or {}).items():
        if isinstance(index, (int, np.integer)) and 0 <= int(index) < k:
            names[int(index)] = str(name)
    dice: dict[str, float | None] = {}
    for i in range(k):
        denominator = confusion[i, :].sum() + confusion[:, i].sum()
        dice[names[i]] = None if denominator == 0 else float(2 * confusion[i, i] / denominator)
    return dice


@dataclass(frozen=True)
class CaseComparison:
    """Label maps of one case from two predictors: voxel agreement and per-label Dice."""

    case: str
    agreement: float
    dice: dict[str, float | None]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class CasesComparison:
    """Whole-case comparison over several cases; passes when every case agrees on enough voxels."""

    cases: tuple[CaseComparison, ...]
    min_agreement: float
    label: str = "candidate vs reference"

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.agreement >= self.min_agreement for c in self.cases)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "min_agreement": self.min_agreement,
            "passed": self.passed,
            "cases": [{**asdict(c), "shape": list(c.shape)} for c in self.cases],
        }

    def __str__(self) -> str:
        lines = [f"{self.label} (whole cases): {'PASSED' if self.passed else 'FAILED'}"]
        for c in self.cases:
            worst = min((d for d in c.dice.values() if d is not None), default=None)
            worst_text = "n/a" if worst is None else f"{worst:.5f}"
            lines.append(
                f"  {c.case}: label agreement {c.agreement:.6f} (>= {self.min_agreement:g}), lowest Dice {worst_text}"
            )
        return "\n".join(lines)


def compare_label_maps(
    reference: np.ndarray, candidate: np.ndarray, labels: Mapping[str, int] | None = None
) -> tuple[float, dict[str, float | None]]:
    """Voxel agreement and per-label Dice of two integer label maps of the same shape (z, y, x)."""
    if reference.shape != candidate.shape:
        raise SegtrtError(f"label maps differ in shape: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.int64).ravel()
    cand = candidate.astype(np.int64).ravel()
    k = int(max(ref.max(initial=0), cand.max(initial=0))) + 1
    confusion = np.bincount(ref * k + cand, minlength=k * k).reshape(k, k)
    agreement = float(np.trace(confusion)) / max(ref.size, 1)
    return agreement, dice_from_confusion(confusion, labels)


def compare_case_labels(
    reference: LabelFn,
    candidate: LabelFn,
    cases: Sequence[Path],
    *,
    min_agreement: float = 0.999,
    labels: Mapping[str, int] | None = None,
    label: str = "candidate vs reference",
) -> CasesComparison:
    """Runs both label producers on every case (sorted order kept as given) and compares the maps.

    reference, candidate: ``Callable[[Path], np.ndarray]`` returning the final (z, y, x) integer
    label map of a case (e.g. segtrt's predictor with the torch backend and with another backend).
    """
    results = []
    for case in cases:
        ref_map, cand_map = reference(Path(case)), candidate(Path(case))
        agreement, dice = compare_label_maps(np.asarray(ref_map), np.asarray(cand_map), labels)
        results.append(CaseComparison(str(case), agreement, dice, tuple(np.shape(ref_map))))
    return CasesComparison(tuple(results), min_agreement, label)
