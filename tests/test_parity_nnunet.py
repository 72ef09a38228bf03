"""segtrt predict vs nnU-Net v2's own nnUNetPredictor, on real nnU-Net model folders (CPU).

Model folders are planned, preprocessed and briefly trained by nnU-Net's own tooling
(tests/nnunet_factory.py). Acceptance (``parity_failures``), from what was measured on these five cases
(max|dp| 4.8e-4 - 1.19e-3; label agreement 1.0 on three, 0.99982 = 1 voxel of 5,544 and 0.99991 = 3 of
33,600 on the two small ones, each at a near-tie). Measured again on 2026-12-02 with torch 2.14.1
(what a fresh install gets then): the anisotropic case differs in 5 of 33,600 voxels (0.999851), all
near-ties, max|dp| 1.07e-3; the others agree fully:

- max |probability difference| <= 3e-3;
- label agreement >= 0.9995 (3.4x the worst measured disagreement; a single differing voxel always
  passes); the runs with mirroring dropped agree on 0.9952 - 0.9992 and fail every criterion;
- every differing voxel is a near-tie in nnU-Net's own probabilities (top-2 gap < 2 x 3e-3);
- identical geometry; Dice >= 0.999 for every label present.

A run with mirroring dropped must fail these checks (it passed the earlier agreement >= 0.995).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk

import nnunetv2  # noqa: F401  (a test dependency: missing = failure)
from nnunet_factory import FactorySpec, make_test_image, run_nnunet_reference  # noqa: E402

from segtrt.cli import main  # noqa: E402

ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class ParityCase:
    name: str
    spec: FactorySpec
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    mirror: bool = True
    folds: tuple[int, ...] = (0,)


CASES = [
    ParityCase("ct_plain_rotated_resampled", FactorySpec(), (40, 52, 44), (1.3, 0.9, 1.1),
               origin=(12.5, -40.0, 7.25), direction=ROTATED),
    ParityCase("smaller_than_patch", FactorySpec(), (14, 22, 18), (1.0, 1.0, 1.0), mirror=False),
    ParityCase("resenc_mr_two_channels", FactorySpec(network="ResidualEncoderUNet", modality="MR", channels=2),
               (36, 40, 44), (1.2, 1.0, 0.8), origin=(-3.0, 4.0, 100.0)),
    ParityCase("anisotropic_ct", FactorySpec(anisotropic=True), (10, 60, 56), (4.5, 0.9, 1.1), mirror=False),
    ParityCase("two_fold_ensemble", FactorySpec(folds=(0, 1)), (40, 44, 48), (1.0, 1.0, 1.0), folds=(0, 1)),
]


MAX_PROBABILITY_DIFFERENCE = 3e-3
MIN_AGREEMENT = 0.9995


def parity_failures(ours: np.ndarray, theirs: np.ndarray, p_ours: np.ndarray, p_ref: np.ndarray) -> list[str]:
    """What is wrong with labels ``ours`` (Z, Y, X) and probabilities ``p_ours`` (K, Z, Y, X) against
    nnU-Net's; empty when they match."""
    failures = []
    max_dp = float(np.abs(p_ours - p_ref).max())
    if max_dp > MAX_PROBABILITY_DIFFERENCE:
        failures.append(f"max|dp| {max_dp:.3g} > {MAX_PROBABILITY_DIFFERENCE:g}")
    differ = ours != theirs
    agreement = 1.0 - float(differ.mean())
    if agreement < MIN_AGREEMENT and int(differ.sum()) > 1:
        failures.append(f"agreement {agreement:.6f} < {MIN_AGREEMENT} ({int(differ.sum())} voxels differ)")
    top2 = np.sort(p_ref, axis=0)[-2:]
    gap = (top2[1] - top2[0])[differ]
    clear = int((gap >= 2 * MAX_PROBABILITY_DIFFERENCE).sum())
    if clear:
        failures.append(f"{clear} differing voxel(s) where nnU-Net's top-2 probability gap is >= "
                        f"{2 * MAX_PROBABILITY_DIFFERENCE:g} (largest {float(gap.max()):.3g})")
    labels = sorted(set(np.unique(theirs)) | set(np.unique(ours)))
    low = {int(k): round(_dice(ours, theirs, k), 6) for k in labels if k != 0 and _dice(ours, theirs, k) < 0.999}
    if low:
        failures.append(f"Dice below 0.999: {low}")
    return failures


def _predict(files, out, model, case: ParityCase, mirror: bool) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    args = ["predict", *map(str, files), "-o", str(out), "-m", str(model), "--device", "cpu",
            "--save-probabilities", "-f", *map(str, case.folds)]
    if not mirror:
        args.append("--no-tta")
    assert main(args) == 0
    image = sitk.ReadImage(str(out / "case.nii.gz"))
    return sitk.GetArrayFromImage(image), np.load(out / "case.npz")["probabilities"], image


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    denom = x.sum() + y.sum()
    return 1.0 if denom == 0 else 2.0 * np.logical_and(x, y).sum() / denom


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_predict_matches_nnunet(case: ParityCase, nnunet_model_folder, tmp_path):
    model = nnunet_model_folder(case.spec)
    files = make_test_image(tmp_path / "in" / "case", case.spec, shape=case.shape, spacing=case.spacing,
                            origin=case.origin, direction=case.direction, seed=7)
    ref = run_nnunet_reference(model, [files], tmp_path / "ref", folds=case.folds, mirror=case.mirror,
                               save_probabilities=True)[0]
    ours, p_ours, ours_img = _predict(files, tmp_path / "ours", model, case, case.mirror)
    ref_img = sitk.ReadImage(str(ref))
    assert ours_img.GetSize() == ref_img.GetSize()
    np.testing.assert_allclose(ours_img.GetSpacing(), ref_img.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours_img.GetOrigin(), ref_img.GetOrigin(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours_img.GetDirection(), ref_img.GetDirection(), rtol=0, atol=1e-9)
    theirs = sitk.GetArrayFromImage(ref_img)
    p_ref = np.load(ref.with_suffix("").with_suffix(".npz"))["probabilities"]
    labels = sorted(set(np.unique(theirs)) | set(np.unique(ours)))
    print(f"\nPARITY {case.name}: agreement={float((ours == theirs).mean()):.6f} "
          f"max|dp|={float(np.abs(p_ours - p_ref).max()):.4g} labels present={labels}")
    assert len(labels) > 1, "the reference segmentation should contain foreground"
    assert parity_failures(ours, theirs, p_ours, p_ref) == []
    if case.mirror:
        # the check must see a dropped mirroring (nnU-Net's own runs with and without it agree on 0.9955 -
        # 0.9999 of voxels, which the earlier threshold of 0.995 let through)
        plain, p_plain, _ = _predict(files, tmp_path / "no_mirroring", model, case, mirror=False)
        dropped = parity_failures(plain, theirs, p_plain, p_ref)
        print(f"PARITY {case.name} without mirroring: {dropped}")
        assert dropped, "dropping mirroring must fail the parity check"
