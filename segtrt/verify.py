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
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from segtrt.errors import SegtrtError
from segtrt.runners.base import Runner

LogitFn = Callable[[torch.Tensor], torch.Tensor]
LabelFn = Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """Limits for a candidate's logits ``c`` against reference logits ``r`` (one batch at a time).

    Values: every value must satisfy ``|c - r| <= scaled_atol * max|r| + rtol * |r|``, i.e.
    numpy.testing.assert_allclose with ``atol = scaled_atol * max|r|``. The absolute part is scaled
    by the batch's largest reference logit because logit scales differ by an order of magnitude
    between networks (3 for an untrained test net, 50-140 for trained ones) while fp16/fp32
    rounding errors grow with that scale.

    Labels: the argmax maps must agree on at least ``min_argmax_agreement`` of the *decided* voxels,
    those whose reference top-1 minus top-2 logit is at least ``argmax_margin * max|r|``. Near-ties
    flip under any change of arithmetic (TF32 alone flips 0.1-0.2% of the voxels of an untrained
    network); a flip where the margin exceeds the worst error the precision allows is a real
    difference. The raw agreement over all voxels is reported too.
    """

    rtol: float
    scaled_atol: float
    min_argmax_agreement: float
    argmax_margin: float = 0.0

    def atol_for(self, scale: float) -> float:
        """The absolute tolerance for a batch whose largest |reference logit| is ``scale``."""
        return self.scaled_atol * scale

    def describe(self) -> str:
        margin = f" where margin >= {self.argmax_margin:g} max|ref|" if self.argmax_margin else ""
        return (
            f"rtol={self.rtol:g}, atol={self.scaled_atol:g} max|ref|, "
            f"argmax agreement >= {self.min_argmax_agreement:g}{margin}"
        )


#: Limits per precision, from measurements (segtrt.onnx_fp16's MEASUREMENTS has the full table).
#: fp32: ONNX Runtime (CPU, or CUDA with TF32 off) vs torch (CPU, or CUDA with TF32 off) differ by
#: at most 8.8e-6 max|ref| (trained 5-stage U-Nets, |logits| up to 140; CUDA vs CUDA 7.6e-7) and
#: 1.2e-6 on the 4-stage test nets: 1e-4 leaves 11x headroom and still fails on TF32 (3e-4 to
#: 3e-3 max|ref|) or any graph difference.
#: fp16: the worst fp16 error measured (GPU fp16 arithmetic in torch and ONNX Runtime CUDA,
#: trained and untrained nets, noise, smooth and CT patches) is 1.04e-2 max|ref| (nnU-Net's own
#: autocast: 1.04e-2), worst ratio to these limits 0.55; decided-voxel margin 1e-2 max|ref| = that
#: worst error, and every measured variant agreed on 100% of the decided voxels.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rtol=1e-4, scaled_atol=1e-4, min_argmax_agreement=0.9999, argmax_margin=0.0),
    "fp16": Tolerance(rtol=1e-2, scaled_atol=2.5e-2, min_argmax_agreement=0.999, argmax_margin=1e-2),
}


def tolerance_for(precision: str) -> Tolerance:
    """The default ``Tolerance`` for ``precision`` ('fp32' or 'fp16')."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise SegtrtError(f"precision must be one of {', '.join(TOLERANCES)}, got {precision!r}") from None


@dataclass(frozen=True)
class LogitComparison:
    """Candidate vs reference logits over one or more batches of patches.

    max_abs / mean_abs: absolute logit difference. max_rel: max|c - r| / max|r|; mean_rel:
    mean|c - r| / mean|r| (scale-relative, so near-zero logits do not blow them up).
    worst_ratio: max over values of |c - r| / (atol + rtol |r|) (see ``Tolerance``); <= 1 means
    assert_allclose passes. outside: how many values exceed the tolerance. nonfinite: NaN/inf in
    the candidate. argmax_agreement: fraction of all voxels with the same argmax label;
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
            f"({self.outside} of {self.num_values} values outside), nonfinite={self.nonfinite}, "
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
            ("non-finite values", str(self.nonfinite), "0"),
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
        self.outside = self.nonfinite = self.values = 0
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
        finite = torch.isfinite(c)
        self.nonfinite += int((~finite).sum())
        diff = torch.where(finite, (c - r).abs(), torch.zeros_like(r))
        scale = float(r.abs().max())
        bound = (self.tolerance.atol_for(scale) + self.tolerance.rtol * r.abs()).clamp_min(1e-30)
        ratio = diff / bound
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_ref = max(self.max_ref, scale)
        self.worst = max(self.worst, float(ratio.max()))
        self.outside += int((ratio > 1.0).sum())
        self.sum_abs += float(diff.sum(dtype=torch.float64))
        self.sum_ref += float(r.abs().sum(dtype=torch.float64))
        self.values += r.numel()
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


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Disables TF32 in cuDNN convolutions and CUDA matmuls for the duration (the fp32 reference)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cudnn = torch.backends.cudnn
        with cudnn.flags(
            enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def torch_reference(network: torch.nn.Module) -> LogitFn:
    """The float32 reference: ``network`` in eval mode, no autocast, no TF32, on its own device.

    The returned callable takes (N, C, Z, Y, X) float32 patches on any device and returns the
    logits on the network's device.
    """
    device = next(network.parameters()).device

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), exact_float32():
            return network.eval()(batch.to(device=device, dtype=torch.float32))

    return run


def random_patches(
    count: int,
    in_channels: int,
    patch_size: Sequence[int],
    *,
    batch: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """``count`` batches of (batch, in_channels, *patch_size) float32 test patches (z, y, x voxels).

    Even-numbered batches are white noise N(0, 1) (like z-scored intensities); odd ones are smooth
    fields (noise blurred over ~4 voxels, rescaled to mean 0 / std 1, plus a bright blob), which
    give the network image-like structure. Deterministic for a seed.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, in_channels, *[int(s) for s in patch_size])
    out = []
    for i in range(count):
        noise = torch.randn(shape, generator=gen)
        out.append((noise if i % 2 == 0 else _smooth_field(noise)).to(device))
    return out


def _smooth_field(noise: torch.Tensor) -> torch.Tensor:
    """Noise blurred with three passes of a box filter (up to 9 voxels wide, ~Gaussian with sigma
    ~4.5 voxels), z-scored, plus a bright ball in the middle; same shape as ``noise``."""
    n, c = noise.shape[:2]
    size = min(noise.shape[2:])
    k = max(1, min(9, size if size % 2 else size - 1))
    x = noise.reshape(n * c, 1, *noise.shape[2:])
    for _ in range(3):
        x = torch.nn.functional.avg_pool3d(x, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)
    x = (x - x.mean()) / x.std().clamp_min(1e-6)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in noise.shape[2:]], indexing="ij")
    ball = (sum(g**2 for g in grids) < 0.25).float() * 3.0
    return (x + ball).reshape(noise.shape)


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


# model level -------------------------------------------------------------------------------------
def compare_folds(
    networks: Sequence[torch.nn.Module],
    runners: Sequence[Runner],
    patches: Sequence[torch.Tensor],
    tolerance: Tolerance,
    *,
    labels: Mapping[str, int] | None = None,
    label: str = "candidate vs torch fp32",
) -> list[LogitComparison]:
    """Each fold's runner against its torch float32 network on the same (N, C, Z, Y, X) patches.

    The runners are activated here (and deactivated after); patches are moved to each runner's
    device, the reference runs on the network's device.
    """
    if len(networks) != len(runners):
        raise SegtrtError(f"got {len(runners)} runners for {len(networks)} networks; give one per fold")
    results = []
    for index, (network, runner) in enumerate(zip(networks, runners)):
        reference = torch_reference(network)
        with runner:
            results.append(compare_runners(
                reference, lambda x, r=runner: r(x.to(r.device)), patches, tolerance,
                labels=labels, label=f"{label} (network {index})",
            ))
    return results


def scan_patches(data: torch.Tensor, patch_size: Sequence[int], count: int, *, seed: int = 0) -> list[torch.Tensor]:
    """``count`` (1, C, Z, Y, X) patches from a preprocessed scan ``data`` (C, z, y, x), on its device.

    The scan is zero-padded (centred, as nnU-Net's sliding window does in normalized space) to at
    least the patch size; the first patch is the centre one, the others are at seeded random
    positions. Returns views into the padded scan.
    """
    patch = [int(p) for p in patch_size]
    pads = [max(p - s, 0) for p, s in zip(patch, data.shape[1:])]
    flat = []
    for pad in reversed(pads):  # torch.nn.functional.pad wants the last axis first
        flat += [pad // 2, pad - pad // 2]
    padded = torch.nn.functional.pad(data, flat) if any(pads) else data
    room = [s - p for s, p in zip(padded.shape[1:], patch)]
    gen = torch.Generator().manual_seed(seed)
    starts = [[r // 2 for r in room]]
    while len(starts) < count:
        starts.append([int(torch.randint(0, r + 1, (1,), generator=gen)) for r in room])
    return [padded[None, :, z:z + patch[0], y:y + patch[1], x:x + patch[2]] for z, y, x in starts[:count]]


@dataclass(frozen=True)
class VerifyReport:
    """Everything ``segtrt verify`` compared: patches per fold, and whole cases when scans were given."""

    backend: str
    precision: str
    device: str
    folds: tuple[str, ...]
    patches: tuple[LogitComparison, ...]
    cases: CasesComparison | None = None

    @property
    def passed(self) -> bool:
        return bool(self.patches) and all(self.patches) and (self.cases is None or self.cases.passed)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {
            "backend": self.backend, "precision": self.precision, "device": self.device, "folds": list(self.folds),
            "passed": self.passed, "patches": [p.to_dict() for p in self.patches],
            "cases": None if self.cases is None else self.cases.to_dict(),
        }

    def __str__(self) -> str:
        parts = [str(p) for p in self.patches]
        if self.cases is not None:
            parts.append(str(self.cases))
        verdict = "PASSED" if self.passed else "FAILED"
        parts.append(f"{self.backend} {self.precision} on {self.device} vs torch fp32: {verdict}")
        return "\n\n".join(parts)
