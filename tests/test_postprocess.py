"""segtrt.postprocess against nnunetv2 2.8.1's convert_predicted_logits_to_segmentation_with_correct_shape.

Each case runs nnU-Net's DefaultPreprocessor for the crop box and shapes, then exports the same random
logits with both implementations. Measured on this file's cases (CPU): label maps identical (0 voxels
differ, float32 and float16 logits, softmax and regions); probabilities max abs error 1.8e-7 (float32
compute vs nnU-Net's float64 resampling), 3.0e-4 from float16 logits.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segtrt.errors import ModelFolderError
from segtrt.postprocess import label_dtype, logits_to_probabilities, logits_to_segmentation
from segtrt.preprocess import PreprocessPlan, preprocess

LABELS = {"background": 0, "a": 1, "b": 2}
REGIONS = {"background": 0, "whole": [1, 2], "core": [2]}  # region-based: channels are (whole, core)
SHAPE, BOX = (11, 14, 13), ((2, 9), (3, 12), (1, 13))  # the nonzero box is smaller than the image


def _plans(target_spacing, transpose, resampling) -> dict:
    """plans.json with one configuration, as nnU-Net's default (spline) or torchres planners write it."""
    if resampling == "resample_data_or_seg_to_shape":
        data_kw = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
        prob_kw = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    else:
        data_kw = prob_kw = {"is_seg": False, "force_separate_z": None, "memefficient_seg_resampling": False}
    configuration = {
        "data_identifier": "d", "preprocessor_name": "DefaultPreprocessor", "patch_size": [8, 8, 8],
        "spacing": list(target_spacing), "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [True], "resampling_fn_data": resampling, "resampling_fn_seg": resampling,
        "resampling_fn_data_kwargs": data_kw, "resampling_fn_seg_kwargs": dict(data_kw, is_seg=True),
        "resampling_fn_probabilities": resampling, "resampling_fn_probabilities_kwargs": dict(prob_kw),
        "architecture": {"network_class_name": "n", "arch_kwargs": {}, "_kw_requires_import": []}}
    return {"dataset_name": "Dataset001_T", "plans_name": "nnUNetPlans", "transpose_forward": list(transpose),
            "transpose_backward": [int(i) for i in np.argsort(transpose)],
            "foreground_intensity_properties_per_channel": {"0": {"mean": 5.0, "std": 2.0}},
            "image_reader_writer": "SimpleITKIO",
            "label_manager": "LabelManager", "configurations": {"3d_fullres": configuration}}


def _nnunet() -> SimpleNamespace:
    """nnunetv2's export, preprocessor and label/plans managers; skips the test without nnunetv2."""
    from nnunetv2.inference import export_prediction as export
    from nnunetv2.preprocessing.preprocessors import default_preprocessor as preprocessing
    from nnunetv2.utilities.label_handling import label_handling as labels
    from nnunetv2.utilities.plans_handling import plans_handler as plans
    return SimpleNamespace(convert=export.convert_predicted_logits_to_segmentation_with_correct_shape,
                           DefaultPreprocessor=preprocessing.DefaultPreprocessor,
                           LabelManager=labels.LabelManager, PlansManager=plans.PlansManager)


def _image() -> np.ndarray:
    image = np.zeros((1, *SHAPE), np.float32)
    image[(0, *(slice(a, b) for a, b in BOX))] = np.random.default_rng(0).normal(
        5, 2, size=[b - a for a, b in BOX])
    return image


def _case(spacing, target_spacing, transpose=(0, 1, 2), resampling="resample_data_or_seg_to_shape"):
    """(plans, nnU-Net properties, segtrt Preprocessed, segtrt plan) for one boxed random image."""
    plans = _plans(target_spacing, transpose, resampling)
    nnunet = _nnunet()
    manager = nnunet.PlansManager(copy.deepcopy(plans))
    _, _, properties = nnunet.DefaultPreprocessor(verbose=False).run_case_npy(
        _image(), None, {"spacing": list(spacing)}, manager, manager.get_configuration("3d_fullres"),
        {"labels": LABELS})
    plan = PreprocessPlan.from_nnunet(plans, plans["configurations"]["3d_fullres"])
    pre = preprocess(torch.from_numpy(_image()), spacing, plan)
    return plans, properties, pre, plan


def _nnunet_export(plans, properties, logits, labels=LABELS, regions_class_order=None):
    nnunet = _nnunet()
    manager = nnunet.PlansManager(copy.deepcopy(plans))
    return nnunet.convert(torch.from_numpy(logits), manager, manager.get_configuration("3d_fullres"),
                          nnunet.LabelManager(labels, regions_class_order), copy.deepcopy(properties),
                          return_probabilities=True, num_threads_torch=1)


def _logits(pre, channels: int, seed: int = 1, dtype=np.float32) -> np.ndarray:
    shape = (channels, *pre.data.shape[1:])
    return (np.random.default_rng(seed).normal(size=shape) * 3).astype(dtype)


# image spacing, network spacing, transpose_forward, resampling function
EXPORT_CASES = {
    "iso": ((2.0, 0.8, 0.9), (1.5, 1.0, 1.0), (0, 1, 2), "resample_data_or_seg_to_shape"),
    "aniso_separate_z": ((4.0, 0.9, 0.9), (4.0, 0.7, 0.7), (0, 1, 2), "resample_data_or_seg_to_shape"),
    "aniso_transposed": ((0.8, 0.9, 4.0), (4.0, 1.1, 1.0), (2, 0, 1), "resample_data_or_seg_to_shape"),
    "torch_method_aniso": ((3.5, 0.7, 0.7), (3.0, 1.0, 1.0), (1, 2, 0), "resample_torch_fornnunet"),
}


@pytest.mark.parametrize("name", sorted(EXPORT_CASES))
def test_segmentation_and_probabilities_match_nnunet(name):
    plans, properties, pre, plan = _case(*EXPORT_CASES[name])
    logits = _logits(pre, 3)
    expected_seg, expected_prob = _nnunet_export(plans, properties, logits)
    seg = logits_to_segmentation(torch.from_numpy(logits), pre, plan)
    assert seg.dtype == torch.uint8 and tuple(seg.shape) == SHAPE
    np.testing.assert_array_equal(seg.numpy(), expected_seg)
    prob = logits_to_probabilities(torch.from_numpy(logits), pre, plan)
    assert prob.dtype == torch.float32 and tuple(prob.shape) == (3, *SHAPE)
    np.testing.assert_allclose(prob.numpy(), expected_prob, rtol=0, atol=1e-6)  # measured 1.8e-7
    outside = np.ones(SHAPE, bool)
    outside[tuple(slice(a, b) for a, b in BOX)] = False
    assert (prob.numpy()[0][outside] == 1).all() and (seg.numpy()[outside] == 0).all()


@pytest.mark.parametrize("channels_per_pass", [1, 2])
def test_running_argmax_equals_one_pass(channels_per_pass):
    _, _, pre, plan = _case(*EXPORT_CASES["aniso_transposed"])
    logits = torch.from_numpy(_logits(pre, 5, seed=2))
    one_pass = logits_to_segmentation(logits, pre, plan)
    chunked = logits_to_segmentation(logits, pre, plan, channels_per_pass=channels_per_pass)
    assert torch.equal(chunked, one_pass)


@pytest.mark.parametrize("channels_per_pass", [None, 1])
def test_ties_go_to_the_first_class_like_nnunet(channels_per_pass):
    plans, properties, pre, plan = _case(*EXPORT_CASES["iso"])
    logits = _logits(pre, 3, seed=3)
    logits[2] = logits[1] = np.maximum(logits[1], logits[0]) + 1.0  # classes 1 and 2 tie everywhere
    expected_seg, _ = _nnunet_export(plans, properties, logits)
    seg = logits_to_segmentation(torch.from_numpy(logits), pre, plan, channels_per_pass=channels_per_pass)
    np.testing.assert_array_equal(seg.numpy(), expected_seg)
    assert set(np.unique(seg.numpy())) == {0, 1}


def test_float16_logits_match_nnunet():
    """nnU-Net accumulates logits in float16 and resamples them back to float16 before argmax."""
    plans, properties, pre, plan = _case(*EXPORT_CASES["aniso_separate_z"])
    logits = _logits(pre, 4, seed=4, dtype=np.float16)
    expected_seg, expected_prob = _nnunet_export(plans, properties, logits,
                                                 labels={**LABELS, "c": 3})
    np.testing.assert_array_equal(logits_to_segmentation(torch.from_numpy(logits), pre, plan).numpy(),
                                  expected_seg)
    prob = logits_to_probabilities(torch.from_numpy(logits), pre, plan)
    np.testing.assert_allclose(prob.numpy(), expected_prob, rtol=0, atol=2e-3)  # measured 3.0e-4


@pytest.mark.parametrize("name", ["iso", "aniso_transposed"])
def test_regions_match_nnunet(name):
    plans, properties, pre, plan = _case(*EXPORT_CASES[name])
    logits = _logits(pre, 2, seed=5)
    expected_seg, expected_prob = _nnunet_export(plans, properties, logits, REGIONS, [1, 2])
    seg = logits_to_segmentation(torch.from_numpy(logits), pre, plan, regions_class_order=[1, 2])
    np.testing.assert_array_equal(seg.numpy(), expected_seg)
    prob = logits_to_probabilities(torch.from_numpy(logits), pre, plan, regions_class_order=[1, 2])
    np.testing.assert_allclose(prob.numpy(), expected_prob, rtol=0, atol=1e-6)  # measured 1.2e-7


def test_many_labels_use_a_wider_dtype():
    plans, properties, pre, plan = _case(*EXPORT_CASES["iso"])
    labels = {"background": 0, **{f"l{i}": i for i in range(1, 300)}}
    logits = _logits(pre, 300, seed=6)
    expected_seg, _ = _nnunet_export(plans, properties, logits, labels)
    seg = logits_to_segmentation(torch.from_numpy(logits), pre, plan, channels_per_pass=64)
    assert seg.dtype == torch.int16 and expected_seg.max() > 255
    np.testing.assert_array_equal(seg.numpy(), expected_seg.astype(np.int64))


def test_probabilities_leave_logits_untouched_without_resampling():
    """Same network and image spacing: nothing is resampled, and the caller's logits stay as they were."""
    plans = _plans((1.0, 1.0, 1.0), (0, 1, 2), "resample_data_or_seg_to_shape")
    plan = PreprocessPlan.from_nnunet(plans, plans["configurations"]["3d_fullres"])
    pre = preprocess(torch.from_numpy(_image()), (1.0, 1.0, 1.0), plan)
    logits = torch.from_numpy(_logits(pre, 3, seed=8))
    before = logits.clone()
    probabilities = logits_to_probabilities(logits, pre, plan)
    assert torch.equal(logits, before)
    expected = torch.softmax(before, dim=0)
    np.testing.assert_allclose(probabilities[(slice(None), *pre.crop_slices())].numpy(), expected.numpy(),
                               rtol=0, atol=1e-6)


def test_label_dtype_bounds():
    assert label_dtype(255) == torch.uint8
    assert label_dtype(256) == torch.int16
    assert label_dtype(40000) == torch.int32


def test_regions_class_order_must_match_channels():
    _, _, pre, plan = _case(*EXPORT_CASES["iso"])
    with pytest.raises(ModelFolderError, match="regions_class_order"):
        logits_to_segmentation(torch.from_numpy(_logits(pre, 3)), pre, plan, regions_class_order=[1, 2])


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(EXPORT_CASES))
def test_cuda_matches_cpu(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    spacing, target, transpose, resampling = EXPORT_CASES[name]
    plans = _plans(target, transpose, resampling)
    plan = PreprocessPlan.from_nnunet(plans, plans["configurations"]["3d_fullres"])
    image = torch.from_numpy(_image())
    pre_cpu, pre_cuda = preprocess(image, spacing, plan), preprocess(image.cuda(), spacing, plan)
    logits = torch.from_numpy(_logits(pre_cpu, 3, seed=7))
    seg_cpu = logits_to_segmentation(logits, pre_cpu, plan)
    seg_cuda = logits_to_segmentation(logits.cuda(), pre_cuda, plan, channels_per_pass=1)
    assert seg_cuda.device.type == "cuda"
    np.testing.assert_array_equal(seg_cuda.cpu().numpy(), seg_cpu.numpy())
    regions_cpu = logits_to_segmentation(logits, pre_cpu, plan, regions_class_order=[1, 2, 3])
    regions_cuda = logits_to_segmentation(logits.cuda(), pre_cuda, plan, regions_class_order=[1, 2, 3])
    np.testing.assert_array_equal(regions_cuda.cpu().numpy(), regions_cpu.numpy())
    np.testing.assert_allclose(logits_to_probabilities(logits.cuda(), pre_cuda, plan).cpu().numpy(),
                               logits_to_probabilities(logits, pre_cpu, plan).numpy(), rtol=0, atol=1e-6)
