"""Model level: every fold's runner against its torch float32 network (``compare_folds``), and
``VerifyReport``, everything ``segtrt verify`` compared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from segtrt.errors import SegtrtError
from segtrt.runners.base import Runner
from segtrt.verify.labels import CasesComparison
from segtrt.verify.logits import LogitComparison, compare_runners
from segtrt.verify.reference import torch_reference
from segtrt.verify.tolerance import Tolerance


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
