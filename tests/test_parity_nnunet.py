"""segtrt predict vs nnU-Net v2's own nnUNetPredictor, on real nnU-Net model folders (CPU).

Model folders are planned, preprocessed and briefly trained by nnU-Net's own tooling
(tests/nnunet_factory.py). Acceptance: voxel agreement >= 0.995, Dice >= 0.99 for every label
present, identical geometry. The max probability difference is printed for the record.
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
    args = ["predict", *map(str, files), "-o", str(tmp_path / "ours"), "-m", str(model), "--device", "cpu",
            "--save-probabilities", "-f", *map(str, case.folds)]
    if not case.mirror:
        args.append("--no-tta")
    assert main(args) == 0
    ours_img = sitk.ReadImage(str(tmp_path / "ours" / "case.nii.gz"))
    ref_img = sitk.ReadImage(str(ref))
    assert ours_img.GetSize() == ref_img.GetSize()
    np.testing.assert_allclose(ours_img.GetSpacing(), ref_img.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours_img.GetOrigin(), ref_img.GetOrigin(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours_img.GetDirection(), ref_img.GetDirection(), rtol=0, atol=1e-9)
    ours, theirs = sitk.GetArrayFromImage(ours_img), sitk.GetArrayFromImage(ref_img)
    agreement = float((ours == theirs).mean())
    labels = sorted(set(np.unique(theirs)) | set(np.unique(ours)))
    dice = {int(k): _dice(ours, theirs, k) for k in labels if k != 0}
    p_ours = np.load(tmp_path / "ours" / "case.npz")["probabilities"]
    p_ref = np.load(ref.with_suffix("").with_suffix(".npz"))["probabilities"]
    max_prob_diff = float(np.abs(p_ours - p_ref).max())
    print(f"\nPARITY {case.name}: agreement={agreement:.6f} dice={dice} max|dp|={max_prob_diff:.4g} "
          f"labels present={labels}")
    assert agreement >= 0.995
    assert all(d >= 0.99 for d in dice.values()), dice
    assert len(labels) > 1, "the reference segmentation should contain foreground"
