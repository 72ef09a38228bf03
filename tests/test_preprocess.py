"""segtrt.preprocess against nnunetv2 2.8.1's DefaultPreprocessor, crop helpers and scipy.

Measured max abs errors vs DefaultPreprocessor.run_case_npy (this file's cases, CPU, float32):
  CTNormalization 4.8e-7, ZScore (+mask, transposed, anisotropic) 4.8e-7, RescaleTo01 0.0 (torch
  resampling), NoNormalization + ZScore 2.3e-5 on raw values up to ~130 (2e-7 relative),
  2D configuration 7.2e-7, run_case from NIfTI files 4.8e-7 (outputs up to ~2.6).
  fill_holes and crop boxes: exact.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import ndimage

from segtrt.errors import InputImageError, ModelFolderError
from segtrt.preprocess import PreprocessPlan, fill_holes, nonzero_bbox, preprocess
from segtrt.resample import ResamplingSpec

DATASET_JSON = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
SPLINE = "resample_data_or_seg_to_shape"
TORCH = "resample_torch_fornnunet"


def nnunet_plans(schemes, use_mask, spacing, transpose=(0, 1, 2), resampling=SPLINE) -> dict:
    """A plans.json dict with one configuration, shaped like what nnU-Net's planners write."""
    backward = [int(i) for i in np.argsort(transpose)]
    if resampling == SPLINE:
        data_kw = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
        prob_kw = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    else:
        data_kw = {"is_seg": False, "force_separate_z": None, "memefficient_seg_resampling": False}
        prob_kw = dict(data_kw)
    configuration = {
        "data_identifier": "d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [8, 8, 8], "spacing": list(spacing), "normalization_schemes": list(schemes),
        "use_mask_for_norm": list(use_mask), "resampling_fn_data": resampling,
        "resampling_fn_seg": resampling, "resampling_fn_data_kwargs": data_kw,
        "resampling_fn_seg_kwargs": dict(data_kw, is_seg=True), "resampling_fn_probabilities": resampling,
        "resampling_fn_probabilities_kwargs": prob_kw,
        "architecture": {"network_class_name": "n", "arch_kwargs": {}, "_kw_requires_import": []}}
    intensities = {str(c): {"mean": 50.0 + c, "std": 30.0, "percentile_00_5": -20.0,
                            "percentile_99_5": 120.0, "max": 200.0, "min": -100.0, "median": 40.0}
                   for c in range(len(schemes))}
    return {"dataset_name": "Dataset001_T", "plans_name": "nnUNetPlans", "transpose_forward": list(transpose),
            "transpose_backward": backward, "foreground_intensity_properties_per_channel": intensities,
            "image_reader_writer": "SimpleITKIO", "label_manager": "LabelManager",
            "configurations": {"3d_fullres": configuration}}


def boxed_image(channels: int, shape, box, seed: int = 0) -> np.ndarray:
    """Zeros with random values (mean 40, sd 30) inside ``box``, and a zero hole inside that box."""
    rng = np.random.default_rng(seed)
    image = np.zeros((channels, *shape), np.float32)
    inner = tuple(slice(a, b) for a, b in box)
    image[(slice(None), *inner)] = rng.normal(40, 30, size=(channels, *[b - a for a, b in box]))
    z, y, x = ((a + b) // 2 for a, b in box)
    image[:, z, y - 1:y + 1, x] = 0.0
    return image


def nnunet_preprocessor(plans: dict):
    """(nnU-Net's DefaultPreprocessor, PlansManager for ``plans``); skips the test without nnunetv2."""
    from nnunetv2.preprocessing.preprocessors import default_preprocessor as module
    from nnunetv2.utilities.plans_handling import plans_handler
    return module.DefaultPreprocessor(verbose=False), plans_handler.PlansManager(copy.deepcopy(plans))


def run_nnunet(plans: dict, image: np.ndarray, spacing) -> tuple[np.ndarray, dict]:
    preprocessor, manager = nnunet_preprocessor(plans)
    data, _, properties = preprocessor.run_case_npy(image.copy(), None, {"spacing": list(spacing)}, manager,
                                                    manager.get_configuration("3d_fullres"), DATASET_JSON)
    return data, properties


def segtrt_plan(plans: dict) -> PreprocessPlan:
    return PreprocessPlan.from_nnunet(plans, plans["configurations"]["3d_fullres"])


# (schemes, use_mask_for_norm, transpose_forward, image spacing, target spacing, resampling fn, atol)
PREPROCESS_CASES = {
    "ct_iso": (["CTNormalization"], [False], (0, 1, 2), (2.0, 0.8, 0.9), (1.5, 1.0, 1.0), SPLINE, 2e-6),
    "zscore_mask_transposed_aniso_2ch": (["ZScoreNormalization", "CTNormalization"], [True, False], (2, 0, 1),
                                         (0.8, 0.9, 4.0), (4.0, 1.1, 1.0), SPLINE, 3e-6),
    "zscore_mask_aniso_target": (["ZScoreNormalization"], [True], (0, 1, 2), (1.0, 1.0, 1.0),
                                 (3.5, 0.9, 0.9), SPLINE, 3e-6),
    "rescale_torch_aniso": (["RescaleTo01Normalization"], [False], (0, 1, 2), (3.5, 0.7, 0.7),
                            (3.0, 1.0, 1.0), TORCH, 1e-6),
    "nonorm_zscore_transposed": (["NoNormalization", "ZScoreNormalization"], [False, False], (1, 2, 0),
                                 (1.0, 1.0, 1.0), (1.2, 0.8, 1.0), SPLINE, 1e-4),  # raw values up to ~130
}


@pytest.mark.parametrize("name", sorted(PREPROCESS_CASES))
def test_preprocess_matches_default_preprocessor(name):
    schemes, use_mask, transpose, spacing, target, resampling, atol = PREPROCESS_CASES[name]
    plans = nnunet_plans(schemes, use_mask, target, transpose, resampling)
    image = boxed_image(len(schemes), (11, 14, 13), ((2, 9), (3, 12), (1, 13)))
    expected, properties = run_nnunet(plans, image, spacing)
    before = image.copy()
    pre = preprocess(torch.from_numpy(image), spacing, segtrt_plan(plans))
    np.testing.assert_array_equal(image, before)  # the caller's image is not modified
    assert pre.bbox == tuple(tuple(b) for b in properties["bbox_used_for_cropping"])
    assert pre.shape_before_cropping == tuple(properties["shape_before_cropping"])
    assert pre.shape_after_cropping == tuple(properties["shape_after_cropping_and_before_resampling"])
    assert pre.data.dtype == torch.float32
    np.testing.assert_allclose(pre.data.numpy(), expected, rtol=0, atol=atol)


def test_2d_configuration_keeps_first_axis_spacing():
    plans = nnunet_plans(["ZScoreNormalization"], [False], (0.6, 0.6))
    image = boxed_image(1, (5, 12, 11), ((0, 5), (1, 11), (2, 10)), seed=1)
    expected, _ = run_nnunet(plans, image, (3.0, 0.8, 0.7))
    pre = preprocess(torch.from_numpy(image), (3.0, 0.8, 0.7), segtrt_plan(plans))
    assert pre.network_spacing == (3.0, 0.6, 0.6)
    np.testing.assert_allclose(pre.data.numpy(), expected, rtol=0, atol=2e-6)


def test_run_case_from_nifti_files(tmp_path):
    """End to end: nnU-Net's run_case reads the files itself; segtrt gets the same arrays."""
    import SimpleITK as sitk
    spacing_xyz = (0.9, 0.8, 2.5)
    image = boxed_image(2, (7, 12, 10), ((1, 6), (2, 11), (1, 9)), seed=2)
    files = []
    for c in range(2):
        itk = sitk.GetImageFromArray(image[c])
        itk.SetSpacing(spacing_xyz)
        files.append(str(tmp_path / f"case_{c:04d}.nii.gz"))
        sitk.WriteImage(itk, files[-1])
    plans = nnunet_plans(["CTNormalization", "ZScoreNormalization"], [False, True], (2.0, 0.7, 0.7))
    preprocessor, manager = nnunet_preprocessor(plans)
    expected, _, _ = preprocessor.run_case(files, None, manager, manager.get_configuration("3d_fullres"),
                                           DATASET_JSON)
    arrays = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(f)) for f in files]).astype(np.float32)
    pre = preprocess(torch.from_numpy(arrays), spacing_xyz[::-1], segtrt_plan(plans))
    np.testing.assert_allclose(pre.data.numpy(), expected, rtol=0, atol=2e-6)


def _random_masks():
    rng = np.random.default_rng(5)
    for density in (0.3, 0.55, 0.7, 0.85):
        yield f"random{density}", rng.random((9, 11, 10)) < density
    z, y, x = np.mgrid[:15, :15, :15]
    r = np.sqrt((z - 7) ** 2 + (y - 7) ** 2 + (x - 7) ** 2)
    yield "nested_shells", (np.abs(r - 6) < 0.9) | (np.abs(r - 3) < 0.9)
    tunnel = np.abs(r - 5) < 1.2
    tunnel[7, 7, 7:] = False  # a 1-voxel tunnel from the cavity to the border: not a hole
    yield "shell_with_tunnel", tunnel
    spiral = np.ones((3, 13, 13), bool)
    spiral[1, 1:12, 1] = spiral[1, 11, 1:12] = spiral[1, 1:12, 11] = spiral[1, 1, 3:12] = False
    spiral[1, 1:10, 3] = spiral[1, 9, 3:10] = spiral[1, 3:10, 9] = spiral[1, 3, 5:10] = False
    yield "winding_corridor_closed", spiral.copy()  # the whole corridor is one hole
    spiral[1, 1, 0] = False  # opening to the border: the whole winding corridor is outside (6 sweeps)
    yield "winding_corridor_open", spiral
    yield "empty", np.zeros((4, 5, 6), bool)
    yield "full", np.ones((4, 5, 6), bool)


@pytest.mark.parametrize("name, mask", list(_random_masks()), ids=[n for n, _ in _random_masks()])
def test_fill_holes_matches_scipy(name, mask):
    expected = ndimage.binary_fill_holes(mask)
    got = fill_holes(torch.from_numpy(mask)).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("box", [((2, 5), (0, 7), (3, 4)), ((0, 6), (0, 7), (0, 8)), None])
def test_nonzero_bbox_matches_acvl(box):
    from acvl_utils.cropping_and_padding import bounding_boxes
    mask = np.zeros((6, 7, 8), bool)
    if box is not None:
        mask[tuple(slice(a, b) for a, b in box)] = np.random.default_rng(0).random(
            [b - a for a, b in box]) < 0.5
        mask[tuple(a for a, _ in box)] = mask[tuple(b - 1 for _, b in box)] = True
    expected = tuple(tuple(int(v) for v in pair) for pair in bounding_boxes.get_bbox_from_mask(mask))
    assert nonzero_bbox(torch.from_numpy(mask)) == expected


def test_plan_reads_nnunet_configuration():
    plans = nnunet_plans(["CTNormalization", "ZScoreNormalization"], [False, True], (2.5, 0.7, 0.7),
                         transpose=(2, 0, 1), resampling=TORCH)
    plan = segtrt_plan(plans)
    assert plan.transpose_forward == (2, 0, 1) and plan.transpose_backward == (1, 2, 0)
    assert plan.target_spacing == (2.5, 0.7, 0.7) and plan.num_channels == 2
    assert plan.needs_nonzero_mask
    assert plan.intensity_properties[0].percentile_99_5 == 120.0
    assert plan.data_resampling == ResamplingSpec(method="torch", force_separate_z=None)


def test_spline_kwargs_default_to_the_functions_defaults():
    """nnU-Net fills a missing keyword from the function signature: force_separate_z=False."""
    plans = nnunet_plans(["CTNormalization"], [False], (1.0, 1.0, 1.0))
    configuration = plans["configurations"]["3d_fullres"]
    configuration["resampling_fn_data_kwargs"] = {"is_seg": False}
    plan = PreprocessPlan.from_nnunet(plans, configuration)
    assert plan.data_resampling == ResamplingSpec(method="spline", order=3, order_z=0, force_separate_z=False)


@pytest.mark.parametrize("edit, message", [
    (lambda p, c: c.update(normalization_schemes=["MyNormalization"]), "MyNormalization"),
    (lambda p, c: c.update(resampling_fn_data="my_resampling"), "my_resampling"),
    (lambda p, c: c["resampling_fn_probabilities_kwargs"].update(antialias=True), "antialias"),
    (lambda p, c: c["resampling_fn_data_kwargs"].update(order=7), "orders"),
    (lambda p, c: p["foreground_intensity_properties_per_channel"].clear(), "CTNormalization"),
    (lambda p, c: p.update(transpose_backward=[0, 1, 2]), "transpose_backward"),
    (lambda p, c: c.pop("spacing"), "spacing"),
])
def test_plan_rejects_what_segtrt_cannot_reproduce(edit, message):
    plans = nnunet_plans(["CTNormalization"], [False], (1.0, 1.0, 1.0), transpose=(1, 0, 2))
    configuration = plans["configurations"]["3d_fullres"]
    edit(plans, configuration)
    with pytest.raises(ModelFolderError, match=message) as info:
        PreprocessPlan.from_nnunet(plans, configuration)
    assert "\n" not in str(info.value)


def test_input_errors_are_user_errors():
    plan = segtrt_plan(nnunet_plans(["CTNormalization"], [False], (1.0, 1.0, 1.0)))
    with pytest.raises(InputImageError, match="2 channel"):
        preprocess(torch.zeros(2, 4, 4, 4), (1.0, 1.0, 1.0), plan)
    with pytest.raises(InputImageError, match="spacing"):
        preprocess(torch.zeros(1, 4, 4, 4), (1.0, 0.0, 1.0), plan)
    with pytest.raises(InputImageError, match="shape"):
        preprocess(torch.zeros(4, 4, 4), (1.0, 1.0, 1.0), plan)


def test_all_zero_image_keeps_full_box_like_nnunet():
    plans = nnunet_plans(["ZScoreNormalization"], [True], (1.0, 1.0, 1.0))
    image = np.zeros((1, 4, 5, 6), np.float32)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected, properties = run_nnunet(plans, image, (1.0, 1.0, 1.0))
    pre = preprocess(torch.from_numpy(image), (1.0, 1.0, 1.0), segtrt_plan(plans))
    assert pre.bbox == tuple(tuple(b) for b in properties["bbox_used_for_cropping"])
    np.testing.assert_array_equal(pre.data.numpy(), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(PREPROCESS_CASES))
def test_cuda_matches_cpu(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    schemes, use_mask, transpose, spacing, target, resampling, atol = PREPROCESS_CASES[name]
    plan = segtrt_plan(nnunet_plans(schemes, use_mask, target, transpose, resampling))
    image = torch.from_numpy(boxed_image(len(schemes), (11, 14, 13), ((2, 9), (3, 12), (1, 13))))
    cpu, cuda = preprocess(image, spacing, plan), preprocess(image.cuda(), spacing, plan)
    assert cuda.data.device.type == "cuda" and cuda.bbox == cpu.bbox
    np.testing.assert_allclose(cuda.data.cpu().numpy(), cpu.data.numpy(), rtol=0, atol=atol)
    for name, mask in _random_masks():
        np.testing.assert_array_equal(fill_holes(torch.from_numpy(mask).cuda()).cpu().numpy(),
                                      ndimage.binary_fill_holes(mask))
