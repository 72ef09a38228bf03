"""Patch-level comparison math: a candidate's logits against the reference's, accumulated over
batches on the logits' device (only scalars come back to the host), as a ``LogitComparison``
(``compare_logits`` for two tensors, ``compare_runners`` for two callables fed the same patches)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping

import torch

from segtrt.errors import SegtrtError
from segtrt.verify.labels import dice_from_confusion
from segtrt.verify.tolerance import Tolerance

LogitFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LogitComparison:
    """Candidate vs reference logits over one or more batches of patches.

    max_abs / mean_abs: absolute logit difference. max_rel: max|c - r| / max|r|; mean_rel:
    mean|c - r| / mean|r| (scale-relative, so near-zero logits do not blow them up).
    worst_ratio: max over values of |c - r| / (atol + rtol |r|) (see ``Tolerance``); <= 1 means
    assert_allclose passes. outside: how many values exceed the tolerance. nonfinite: NaN/inf in
    the candidate; reference_nonfinite: NaN/inf in the reference (either fails the comparison: a
    non-finite value is never "within tolerance", and the statistics use the finite values only). argmax_agreement: fraction of all voxels with the same argmax label;
    decided_agreement: the same over decided voxels (``Tolerance.argmax_margin``), which make up
    ``decided_fraction`` of the voxels. dice: per label name, Dice of the two argmax maps over all
    voxels (None where the label is absent from both).
    """

    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    worst_ratio: float
    outside: int
    nonfinite: int
    reference_nonfinite: int
    argmax_agreement: float
    decided_agreement: float
    decided_fraction: float
    dice: dict[str, float | None]
    num_values: int
    num_voxels: int
    tolerance: Tolerance
    label: str = "candidate vs reference"
    shapes: tuple[tuple[int, ...], ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return (
            self.nonfinite == 0
            and self.reference_nonfinite == 0
            and math.isfinite(self.worst_ratio)
            and self.worst_ratio <= 1.0
            and self.decided_agreement >= self.tolerance.min_argmax_agreement
        )

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shapes"] = [list(s) for s in self.shapes]
        data["passed"] = self.passed
        return data

    def summary(self) -> str:
        """One line with the numbers that decide pass/fail (for error messages and logs)."""
        return (
            f"{self.label}: max|diff|={self.max_abs:.3g} (max rel {self.max_rel:.3g}), "
            f"mean|diff|={self.mean_abs:.3g}, worst |diff|/(atol+rtol|ref|)={self.worst_ratio:.3g} "
            f"({self.outside} of {self.num_values} values outside), nonfinite={self.nonfinite} "
            f"(reference {self.reference_nonfinite}), "
            f"argmax agreement {self.decided_agreement:.6f} on decided voxels ({self.decided_fraction:.4f} of all), "
            f"{self.argmax_agreement:.6f} on all; limits {self.tolerance.describe()}"
        )

    def __str__(self) -> str:
        tol = self.tolerance
        rows = [
            ("max |diff|", f"{self.max_abs:.3e}", ""),
            ("mean |diff|", f"{self.mean_abs:.3e}", ""),
            ("max |diff| / max |ref|", f"{self.max_rel:.3e}", ""),
            ("mean |diff| / mean |ref|", f"{self.mean_rel:.3e}", ""),
            ("worst |diff| / (atol + rtol |ref|)", f"{self.worst_ratio:.3f}",
             f"<= 1 (rtol={tol.rtol:g}, atol={tol.scaled_atol:g} max|ref|)"),
            ("values outside tolerance", f"{self.outside} / {self.num_values}", "0"),
            ("non-finite values, candidate", str(self.nonfinite), "0"),
            ("non-finite values, reference", str(self.reference_nonfinite), "0"),
            ("argmax agreement, decided voxels", f"{self.decided_agreement:.6f}",
             f">= {tol.min_argmax_agreement:g} (margin >= {tol.argmax_margin:g} max|ref|)"),
            ("decided voxels", f"{self.decided_fraction:.4f}", ""),
            ("argmax agreement, all voxels", f"{self.argmax_agreement:.6f}", ""),
        ]
        rows += [(f"Dice {name}", "absent" if d is None else f"{d:.5f}", "") for name, d in self.dice.items()]
        width = max(len(r[0]) for r in rows)
        lines = [f"{self.label}: {'PASSED' if self.passed else 'FAILED'}"]
        lines += [f"  {m:<{width}}  {v:>20}  {lim}".rstrip() for m, v, lim in rows]
        return "\n".join(lines)


class _Accumulator:
    """Running statistics of candidate vs reference logits (scalars only leave the device)."""

    def __init__(self, tolerance: Tolerance) -> None:
        self.tolerance = tolerance
        self.max_abs = self.max_ref = self.worst = 0.0
        self.sum_abs = self.sum_ref = 0.0
        self.outside = self.nonfinite = self.reference_nonfinite = self.values = 0
        self.decided = self.decided_agree = 0
        self.confusion: torch.Tensor | None = None
        self.shapes: list[tuple[int, ...]] = []

    def update(self, reference: torch.Tensor, candidate: torch.Tensor) -> None:
        """reference, candidate: (N, K, Z, Y, X) logits (any float dtype; candidate moved to the
        reference's device)."""
        if tuple(reference.shape) != tuple(candidate.shape):
            raise SegtrtError(
                f"candidate logits have shape {tuple(candidate.shape)}, the reference {tuple(reference.shape)}; "
                "the two models do not match (export the same model folder, fold and configuration)"
            )
        r = reference.detach().float()
        c = candidate.detach().to(device=r.device, dtype=torch.float32)
        self.shapes.append(tuple(r.shape))
        ref_finite, cand_finite = torch.isfinite(r), torch.isfinite(c)
        self.reference_nonfinite += int((~ref_finite).sum())
        self.nonfinite += int((~cand_finite).sum())
        both = ref_finite & cand_finite
        r_safe = torch.where(ref_finite, r, torch.zeros_like(r))
        diff = torch.where(both, (c - r).abs(), torch.zeros_like(r))
        scale = float(r_safe.abs().max())
        bound = (self.tolerance.atol_for(scale) + self.tolerance.rtol * r_safe.abs()).clamp_min(1e-30)
        ratio = diff / bound
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_ref = max(self.max_ref, scale)
        self.worst = max(self.worst, float(ratio.max()))
        self.outside += int((ratio > 1.0).sum())
        self.sum_abs += float(diff.sum(dtype=torch.float64))
        self.sum_ref += float(r_safe.abs().sum(dtype=torch.float64))
        self.values += r.numel()
        finite = cand_finite
        r = torch.where(ref_finite, r, torch.full_like(r, -math.inf))
        ref_labels = r.argmax(dim=1)
        cand_labels = torch.where(finite, c, torch.full_like(c, -math.inf)).argmax(dim=1)
        decided = _decided(r, self.tolerance.argmax_margin * scale)
        self._update_labels(ref_labels, cand_labels, decided, r.shape[1])

    def _update_labels(self, ref_labels: torch.Tensor, cand_labels: torch.Tensor, decided: torch.Tensor,
                       k: int) -> None:
        counts = torch.bincount((ref_labels * k + cand_labels).flatten(), minlength=k * k).reshape(k, k).cpu()
        if self.confusion is not None and self.confusion.shape[0] != k:
            raise SegtrtError(
                f"compared batches have {self.confusion.shape[0]} and then {k} classes; compare one model"
            )
        self.confusion = counts if self.confusion is None else self.confusion + counts
        self.decided += int(decided.sum())
        self.decided_agree += int((decided & (ref_labels == cand_labels)).sum())

    def result(self, label: str, labels: Mapping[str, int] | None) -> LogitComparison:
        if self.confusion is None:
            raise SegtrtError("no patches were compared: give at least one patch")
        conf = self.confusion.double()
        voxels = int(conf.sum())
        return LogitComparison(
            max_abs=self.max_abs,
            mean_abs=self.sum_abs / self.values,
            max_rel=self.max_abs / self.max_ref if self.max_ref > 0 else math.inf,
            mean_rel=self.sum_abs / self.sum_ref if self.sum_ref > 0 else math.inf,
            worst_ratio=self.worst,
            outside=self.outside,
            nonfinite=self.nonfinite,
            reference_nonfinite=self.reference_nonfinite,
            argmax_agreement=float(conf.diagonal().sum()) / voxels,
            decided_agreement=self.decided_agree / self.decided if self.decided else 1.0,
            decided_fraction=self.decided / voxels,
            dice=dice_from_confusion(conf.numpy(), labels),
            num_values=self.values,
            num_voxels=voxels,
            tolerance=self.tolerance,
            label=label,
            shapes=tuple(self.shapes),
        )


def _decided(reference: torch.Tensor, margin: float) -> torch.Tensor:
    """(N, Z, Y, X) bool: voxels whose top-1 minus top-2 reference logit is at least ``margin``."""
    if reference.shape[1] < 2:
        return torch.ones(reference.shape[:1] + reference.shape[2:], dtype=torch.bool, device=reference.device)
    top2 = reference.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) >= margin


def compare_logits(
    reference: torch.Tensor,
    candidate: torch.Tensor,
    tolerance: Tolerance,
    *,
    labels: Mapping[str, int] | None = None,
    label: str = "candidate vs reference",
) -> LogitComparison:
    """Compares two (N, K, Z, Y, X) logit tensors (candidate moved to the reference's device)."""
    acc = _Accumulator(tolerance)
    acc.update(reference, candidate)
    return acc.result(label, labels)


def compare_runners(
    reference: LogitFn,
    candidate: LogitFn,
    patches: Iterable[torch.Tensor],
    tolerance: Tolerance,
    *,
    labels: Mapping[str, int] | None = None,
    label: str = "candidate vs reference",
) -> LogitComparison:
    """Feeds each (N, C, Z, Y, X) float32 patch batch to both callables and compares the logits.

    Each callable receives the patch as given (move it to the runner's device inside the callable
    if needed); the candidate's logits are compared on the reference's device.
    """
    acc = _Accumulator(tolerance)
    for batch in patches:
        ref = reference(batch)
        acc.update(ref, candidate(batch))
    return acc.result(label, labels)
