"""segtrt.verify: the statistics against numpy/scipy computations, and the pass/fail rules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import dice as scipy_dice_dissimilarity

from segtrt.errors import SegtrtError
from segtrt.verify import (
    TOLERANCES,
    CasesComparison,
    Tolerance,
    compare_case_labels,
    compare_label_maps,
    compare_logits,
    compare_runners,
    exact_float32,
    random_patches,
    tolerance_for,
    torch_reference,
)

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}


def logits(seed: int = 0, shape=(2, 4, 6, 7, 8), scale: float = 5.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_identical_logits_pass_with_zero_error():
    ref = logits()
    result = compare_logits(ref, ref.clone(), TOLERANCES["fp32"], labels=LABELS)
    assert result.passed and bool(result)
    assert result.max_abs == result.mean_abs == result.worst_ratio == 0.0
    assert result.outside == result.nonfinite == 0
    assert result.argmax_agreement == result.decided_agreement == 1.0
    present = set(ref.argmax(1).unique().tolist())
    assert result.dice == {name: (1.0 if i in present else None) for name, i in LABELS.items()}
    assert result.num_values == ref.numel() and result.num_voxels == ref[:, 0].numel()


@pytest.mark.parametrize("seed", range(6))
def test_statistics_match_numpy_and_the_assert_allclose_criterion(seed):
    ref = logits(seed)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 10.0 ** rng.uniform(-6, -2), ref.shape).astype(np.float32)
    cand = ref + torch.from_numpy(noise)
    tol = Tolerance(rtol=1e-3, scaled_atol=1e-4, min_argmax_agreement=0.0)
    result = compare_logits(ref, cand, tol)
    r, c = ref.numpy().astype(np.float64), cand.numpy().astype(np.float64)
    diff = np.abs(c - r)
    np.testing.assert_allclose(result.max_abs, diff.max(), rtol=1e-6)
    np.testing.assert_allclose(result.mean_abs, diff.mean(), rtol=1e-6)
    np.testing.assert_allclose(result.max_rel, diff.max() / np.abs(r).max(), rtol=1e-6)
    np.testing.assert_allclose(result.mean_rel, diff.mean() / np.abs(r).mean(), rtol=1e-6)
    atol = 1e-4 * np.abs(r).max()
    # float32 diff vs float64 diff: allow the ratio to differ by float32 rounding
    np.testing.assert_allclose(result.worst_ratio, (diff / (atol + 1e-3 * np.abs(r))).max(), rtol=1e-4)
    try:
        np.testing.assert_allclose(cand.numpy(), ref.numpy(), rtol=1e-3, atol=atol)
        allclose = True
    except AssertionError:
        allclose = False
    if abs(result.worst_ratio - 1.0) > 1e-3:  # away from the boundary both must agree
        assert result.passed == allclose
    np.testing.assert_allclose(result.argmax_agreement, np.mean(r.argmax(1) == c.argmax(1)), rtol=1e-12)


def test_dice_matches_scipy():
    ref = logits(1)
    cand = logits(2)  # unrelated: Dice far from 1
    result = compare_logits(ref, cand, TOLERANCES["fp16"], labels=LABELS)
    ref_labels, cand_labels = ref.argmax(1).numpy().ravel(), cand.argmax(1).numpy().ravel()
    for name, index in LABELS.items():
        expected = 1.0 - scipy_dice_dissimilarity(ref_labels == index, cand_labels == index)
        np.testing.assert_allclose(result.dice[name], expected, rtol=1e-12)
    assert not result.passed


def test_decided_agreement_ignores_near_ties_only():
    ref = torch.zeros(1, 3, 2, 2, 2)
    ref[:, 0] = 10.0  # decided voxels: class 0 by a margin of 10
    ref[0, 0, 0, 0, 0] = 0.0  # a near tie between classes 0, 1, 2 (margin 0)
    cand = ref.clone()
    cand[0, 1, 0, 0, 0] = 0.01  # flips the near tie: class 1
    tol = Tolerance(rtol=0.0, scaled_atol=0.01, min_argmax_agreement=1.0, argmax_margin=0.01)
    result = compare_logits(ref, cand, tol)
    assert result.argmax_agreement == pytest.approx(7 / 8)
    assert result.decided_fraction == pytest.approx(7 / 8)
    assert result.decided_agreement == 1.0 and result.passed
    cand[0, 1, 1, 1, 1] = 20.0  # flips a decided voxel (and breaks the value tolerance)
    result = compare_logits(ref, cand, tol)
    assert result.decided_agreement == pytest.approx(6 / 7) and not result.passed


def test_nonfinite_candidate_values_fail():
    ref = logits()
    cand = ref.clone()
    cand[0, 1, 2, 3, 4] = math.nan
    cand[1, 0, 0, 0, 0] = math.inf
    result = compare_logits(ref, cand, TOLERANCES["fp16"])
    assert result.nonfinite == 2 and not result.passed
    assert math.isfinite(result.max_abs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_reference_fails_even_against_a_wildly_wrong_candidate(bad):
    # the case that used to pass: a NaN in the reference made every limit NaN, and NaN > limit is False
    ref = logits()
    ref[0, 0, 0, 0, 0] = bad
    result = compare_logits(ref, ref + 5.0, TOLERANCES["fp32"])
    assert result.reference_nonfinite == 1 and not result.passed
    assert result.worst_ratio > 1.0, "the finite values must still be compared"
    clean = compare_logits(ref, ref.clone(), TOLERANCES["fp32"])
    assert not clean.passed, "a non-finite reference is never a pass"


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(SegtrtError, match="do not match"):
        compare_logits(logits(shape=(1, 3, 4, 4, 4)), logits(shape=(1, 4, 4, 4, 4)), TOLERANCES["fp32"])


def test_compare_runners_aggregates_batches_like_one_big_comparison():
    patches = [torch.randn(2, 1, 4, 5, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    weight = torch.randn(3, 1, 1, 1, 1)

    def ref_fn(x):
        return torch.nn.functional.conv3d(x, weight)

    def cand_fn(x):
        return ref_fn(x) + 1e-3 * x

    combined = compare_runners(ref_fn, cand_fn, patches, TOLERANCES["fp16"], label="toy")
    whole = torch.cat(patches)
    single = compare_logits(ref_fn(whole), cand_fn(whole), TOLERANCES["fp16"])
    for field in ("max_abs", "mean_abs", "max_rel", "mean_rel", "argmax_agreement", "num_values"):
        np.testing.assert_allclose(getattr(combined, field), getattr(single, field), rtol=1e-6)
    assert combined.shapes == ((2, 3, 4, 5, 6),) * 3 and combined.label == "toy"
    with pytest.raises(SegtrtError, match="no patches"):
        compare_runners(ref_fn, cand_fn, [], TOLERANCES["fp16"])


def test_result_is_json_serialisable_and_prints_its_limits():
    ref = logits()
    result = compare_logits(ref, ref + 2.0, TOLERANCES["fp16"], labels=LABELS, label="onnx fp16 vs torch")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is False and data["tolerance"]["rtol"] == TOLERANCES["fp16"].rtol
    text = str(result)
    assert text.startswith("onnx fp16 vs torch: FAILED")
    assert "rtol=0.01" in text and "atol=0.025 max|ref|" in text and "Dice liver" in text
    assert "limits" in result.summary()


def test_tolerance_for_unknown_precision():
    assert tolerance_for("fp16") is TOLERANCES["fp16"]
    with pytest.raises(SegtrtError, match="fp32, fp16"):
        tolerance_for("int8")


def test_random_patches_are_deterministic_and_shaped():
    a = random_patches(4, 2, (8, 10, 12), batch=3, seed=7)
    b = random_patches(4, 2, (8, 10, 12), batch=3, seed=7)
    assert len(a) == 4 and all(x.shape == (3, 2, 8, 10, 12) and x.dtype == torch.float32 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    noise, smooth = a[0], a[1]

    def neighbour_correlation(x):
        return float(np.corrcoef(x[..., :-1].flatten(), x[..., 1:].flatten())[0, 1])

    # white noise: neighbours uncorrelated; smooth field (sigma ~4 voxels): strongly correlated
    assert abs(neighbour_correlation(noise)) < 0.05
    assert neighbour_correlation(smooth) > 0.8
    assert random_patches(1, 1, (3, 4, 5))[0].shape == (1, 1, 3, 4, 5)  # smaller than the filter


def test_torch_reference_runs_in_eval_mode_without_grad():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.Dropout(0.5)).train()
    ref = torch_reference(net)
    x = torch.randn(1, 1, 2, 3, 4, dtype=torch.float64)
    out = ref(x)
    assert out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out, ref(x))  # dropout off: deterministic


def test_exact_float32_restores_the_tf32_flags():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with exact_float32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_label_maps_and_whole_case_comparison(tmp_path):
    rng = np.random.default_rng(0)
    maps = {f"case{i}": rng.integers(0, 4, (5, 6, 7)) for i in range(3)}
    flipped = {k: v.copy() for k, v in maps.items()}
    flipped["case1"][0, 0, :3] = (flipped["case1"][0, 0, :3] + 1) % 4  # 3 of 210 voxels differ
    cases = [tmp_path / name for name in sorted(maps)]
    result = compare_case_labels(lambda p: maps[p.name], lambda p: flipped[p.name], cases,
                                 min_agreement=0.98, labels=LABELS)
    assert [c.agreement for c in result.cases] == [1.0, pytest.approx(207 / 210), 1.0]
    assert result.passed and isinstance(result, CasesComparison)
    strict = compare_case_labels(lambda p: maps[p.name], lambda p: flipped[p.name], cases, min_agreement=0.99)
    assert not strict.passed and "FAILED" in str(strict)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["cases"][1]["shape"] == [5, 6, 7] and data["passed"] is True
    agreement, dice = compare_label_maps(maps["case1"], flipped["case1"], LABELS)
    for name, index in LABELS.items():
        expected = 1.0 - scipy_dice_dissimilarity(maps["case1"].ravel() == index, flipped["case1"].ravel() == index)
        np.testing.assert_allclose(dice[name], expected, rtol=1e-12)
    with pytest.raises(SegtrtError, match="differ in shape"):
        compare_label_maps(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    assert not CasesComparison((), 0.9).passed  # nothing compared is not a pass


# the CLI (needs a trained nnU-Net model: built once per session) ------------------------------------
@pytest.fixture
def trained_folder(nnunet_model_folder):
    from nnunet_factory import FactorySpec

    return nnunet_model_folder(FactorySpec())


@pytest.mark.slow
def test_verify_cli_compares_patches_and_whole_cases(trained_folder, tmp_path, capsys):
    import onnxruntime  # noqa: F401  (a test dependency: missing = failure)
    from nnunet_factory import FactorySpec, make_test_image

    from segtrt.cli import main

    scan = make_test_image(tmp_path / "scans" / "case", FactorySpec(), shape=(36, 40, 44), seed=3)[0]
    report_path = tmp_path / "verify.json"
    rc = main(["verify", "-m", str(trained_folder), "--backend", "onnxruntime", "--precision", "fp16",
               "--device", "cpu", "--patches", "2", "--json", str(report_path), str(scan)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASSED" in out and "rtol=0.01" in out and "whole cases" in out
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["precision"] == "fp16" and report["folds"] == ["0"]
    assert report["cases"]["cases"][0]["agreement"] >= 0.999
    assert report["patches"][0]["num_voxels"] == 2 * int(np.prod(report["patches"][0]["shapes"][0][2:]))


@pytest.mark.slow
def test_verify_cli_exits_1_past_tolerance_and_2_on_user_errors(trained_folder, tmp_path, monkeypatch, capsys):
    import onnxruntime  # noqa: F401  (a test dependency: missing = failure)
    import segtrt.verify
    from segtrt.cli import main

    # zero tolerance: ONNX Runtime and torch differ by float32 rounding (~1e-6), so this must fail
    monkeypatch.setitem(segtrt.verify.TOLERANCES, "fp32", Tolerance(rtol=0.0, scaled_atol=0.0,
                                                                      min_argmax_agreement=1.0))
    rc = main(["verify", "-m", str(trained_folder), "--device", "cpu", "--patches", "1"])
    assert rc == 1 and "FAILED" in capsys.readouterr().out
    monkeypatch.undo()
    exported = tmp_path / "fp32.onnx"
    assert main(["export", "-m", str(trained_folder), "-o", str(exported), "--no-check"]) == 0
    rc = main(["verify", "-m", str(trained_folder), "--device", "cpu", "--precision", "fp16",
               "--onnx", str(exported)])
    assert rc == 2 and "is an fp32 export" in capsys.readouterr().err
