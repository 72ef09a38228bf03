"""z-streamed aggregation: equal to the whole-volume path up to float16 storage; the auto decision; export."""

import itertools

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from segtrt.errors import SegtrtError
from segtrt.postprocess import logits_to_probabilities, logits_to_segmentation
from segtrt.preprocess import PreprocessPlan, preprocess
from segtrt.sliding import SlidingWindowOptions, _rows, sliding_window_logits, streamed_window_logits
from segtrt.streaming import AUTO_STREAM_BYTES, choose_streaming, padded_shape, whole_volume_bytes
from segtrt.windows import compute_windows

PATCH = (8, 12, 10)
# smaller than the patch in every axis / in y; z not a multiple of the step; exactly the patch; tall
SHAPES = [(5, 7, 9), (23, 9, 31), (8, 12, 10), (41, 30, 11), (17, 13, 10)]
STEPS = [0.5, 0.33, 1.0]
RUNS = {  # mirror axes, windows per group, backend call limits
    "plain": dict(mirror_axes=(), batch_size=1),
    "mirrored_fixed_batch": dict(mirror_axes=(0, 1, 2), batch_size=3, fixed_call_batch=4),
    "mirrored_max_batch": dict(mirror_axes=(0, 2), batch_size=3, max_call_batch=5),
}
# float16 rounds to nearest with an 11-bit significand: relative error <= 2**-11 (absolute 2**-25 for
# subnormals); float32 sums of a different batching may differ by a few ulp more. Measured: the streamed
# logits are exactly the whole-volume logits rounded to float16 on every case here.
RTOL, ATOL = 2.0**-11 + 1e-6, 2.0**-24


def _network(channels: int = 2, classes: int = 3):
    """A fixed random 3x3x3 conv plus a z ramp: depends on position in the patch and on flips."""
    weight = torch.randn((classes, channels, 3, 3, 3), generator=torch.Generator().manual_seed(7)) / 6

    def predict(x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, x.shape[2]).view(1, 1, -1, 1, 1)
        return torch.nn.functional.conv3d(x, weight, padding=1) + ramp

    return predict


def _pointwise(classes: int = 3):
    """Per-voxel and position-dependent: the same floats whatever the batching (no convolution algorithms)."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, x.shape[3], device=x.device).view(1, 1, 1, -1, 1)
        scale = torch.arange(1, classes + 1, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
        return x[:, :1] * scale + ramp

    return predict


@pytest.mark.parametrize("shape,step,run", list(itertools.product(SHAPES, STEPS, sorted(RUNS))))
def test_streamed_equals_whole_volume(shape, step, run):
    data = torch.randn((2, *shape), generator=torch.Generator().manual_seed(sum(shape)))
    options = SlidingWindowOptions(patch_size=PATCH, num_classes=3, step_size=step, **RUNS[run])
    whole = sliding_window_logits(data, [_network()], options)
    seen = []
    streamed = streamed_window_logits(data, [_network()], options, progress=lambda d, t: seen.append((d, t)))
    assert streamed.dtype == torch.float16 and streamed.device.type == "cpu"
    assert streamed.shape == whole.shape == (3, *shape)
    assert_allclose(streamed.float().numpy(), whole.numpy(), rtol=RTOL, atol=ATOL)
    total = len(compute_windows(padded_shape(shape, PATCH), PATCH, step))
    assert sum(d for d, _ in seen) == total and {t for _, t in seen} == {total}


def test_streamed_averages_folds_and_float16_accumulation():
    data = torch.randn((1, 30, 14, 12), generator=torch.Generator().manual_seed(2)) * 20
    options = SlidingWindowOptions(patch_size=PATCH, num_classes=1, mirror_axes=(0,),
                                   accumulate_dtype=torch.float16)
    whole = sliding_window_logits(data, [lambda x: x, lambda x: 3 * x], options)
    streamed = streamed_window_logits(data, [lambda x: x, lambda x: 3 * x], options)
    assert torch.isfinite(streamed).all()
    # float16 accumulators on both paths, same sums in the same order: the same float16 values
    assert torch.equal(streamed, whole)


def test_rows_share_a_z_start_and_follow_compute_windows():
    windows = compute_windows((30, 20, 20), (8, 12, 10), 0.5)
    rows = _rows(windows)
    assert [w for row in rows for w in row] == windows
    starts = [row[0].start[0] for row in rows]
    assert starts == sorted(set(starts)) and all(len({w.start[0] for w in row}) == 1 for row in rows)
    assert max(b - a for a, b in zip(starts, starts[1:])) <= 8


def test_whole_volume_bytes_of_the_memory_case():
    """117 classes on 600 x 266 x 266: 19.9 GB of float32 logits plus 0.17 GB of weights."""
    assert whole_volume_bytes(117, (600, 266, 266), torch.float32) == 118 * 600 * 266 * 266 * 4
    assert whole_volume_bytes(117, (600, 266, 266), torch.float16) == 118 * 600 * 266 * 266 * 2
    assert padded_shape((600, 100, 266), (128, 128, 128)) == (600, 128, 266)


@pytest.mark.parametrize(
    "mode,classes,shape,device,expected",
    [
        ("auto", 117, (600, 266, 266), "cuda", True),   # 18.6 GiB > 4 GiB
        ("auto", 117, (600, 266, 266), "cpu", False),   # never on the CPU in auto
        ("auto", 5, (600, 266, 266), "cuda", False),    # 0.95 GiB
        ("off", 117, (600, 266, 266), "cuda", False),
        ("on", 2, (8, 8, 8), "cpu", True),
    ],
)
def test_choice(mode, classes, shape, device, expected):
    choice = choose_streaming(mode, classes, shape, torch.float32, torch.device(device))
    assert choice.streamed is expected
    assert choice.accumulator_bytes == whole_volume_bytes(classes, shape, torch.float32)
    assert f"stream={mode}" in choice.reason and "GiB" in choice.reason


def test_auto_threshold_is_strictly_greater():
    voxels = AUTO_STREAM_BYTES // (4 * 4)  # 3 classes + weights in float32: exactly the limit
    at_limit = choose_streaming("auto", 3, (voxels, 1, 1), torch.float32, torch.device("cuda"))
    above = choose_streaming("auto", 3, (voxels + 1, 1, 1), torch.float32, torch.device("cuda"))
    assert not at_limit.streamed and above.streamed


def test_unknown_mode_is_a_user_error():
    with pytest.raises(SegtrtError, match=r"stream \(--stream\) must be one of auto, on, off, got 'yes'"):
        choose_streaming("yes", 2, (8, 8, 8), torch.float32, torch.device("cpu"))


def _export_case():
    """A case whose network spacing differs from the image's, so export resamples."""
    plans = {"transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0}},
             "configurations": {"3d_fullres": {
                 "spacing": [2.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
                 "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                 "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                 "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                 "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                        "force_separate_z": None}}}}
    plan = PreprocessPlan.from_nnunet(plans, plans["configurations"]["3d_fullres"])
    image = torch.randn((1, 13, 15, 11), generator=torch.Generator().manual_seed(4)) + 3
    return preprocess(image, (1.5, 0.8, 1.0), plan), plan


def test_export_of_streamed_logits_matches_whole_volume():
    pre, plan = _export_case()
    options = SlidingWindowOptions(patch_size=(8, 8, 8), num_classes=3, mirror_axes=(0,))
    network = _network(channels=1)
    whole = sliding_window_logits(pre.data, [network], options)
    streamed = streamed_window_logits(pre.data, [network], options)
    cpu = torch.device("cpu")
    labels = logits_to_segmentation(streamed, pre, plan, channels_per_pass=1, device=cpu)
    expected = logits_to_segmentation(whole, pre, plan)
    assert labels.device == cpu and labels.shape == expected.shape
    # float16 logits: near-ties within 2**-11 may flip (measured 0.99953: 1 of 2145 voxels)
    assert (labels == expected).float().mean() >= 0.999
    probabilities = logits_to_probabilities(streamed, pre, plan, channels_per_pass=2, device=cpu)
    assert probabilities.dtype == torch.float32 and probabilities.device == cpu
    # softmax of logits rounded to float16 (relative 2**-11 on logits up to ~2; measured 2.0e-4)
    assert_allclose(probabilities.numpy(), logits_to_probabilities(whole, pre, plan).numpy(), rtol=0, atol=1e-3)
    assert_allclose(probabilities.sum(0).numpy(), np.ones(probabilities.shape[1:]), atol=1e-5)


@pytest.mark.gpu
def test_cuda_streamed_logits_are_pinned_and_export_on_the_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pre, plan = _export_case()
    data = pre.data.cuda()
    options = SlidingWindowOptions(patch_size=(8, 8, 8), num_classes=3, mirror_axes=(0, 1))
    whole = sliding_window_logits(data, [_pointwise()], options)
    streamed = streamed_window_logits(data, [_pointwise()], options)
    assert streamed.device.type == "cpu" and streamed.is_pinned()
    assert_allclose(streamed.float().numpy(), whole.cpu().numpy(), rtol=RTOL, atol=1e-6)
    labels = logits_to_segmentation(streamed, pre, plan, device=data.device)
    assert labels.device.type == "cuda"
    probabilities = logits_to_probabilities(streamed, pre, plan, device=data.device)
    assert probabilities.device.type == "cpu"
    # logits up to ~10, stored in float16 steps of 2**-7 near 10: measured 7e-4 with the same data on the CPU
    assert_allclose(probabilities.numpy(), logits_to_probabilities(whole, pre, plan).cpu().numpy(), atol=2e-3)
