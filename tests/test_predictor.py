"""The predictor on the bundled sample model (CPU): z-streamed vs whole-volume aggregation, and its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segtrt.cli import build_parser
from segtrt.config import DEFAULT_MODEL_DIR, PredictSettings
from segtrt.errors import BackendUnavailableError, DeviceMemoryError, NonFiniteError, SegtrtError
from segtrt.nnunet import load_model
from segtrt.io import Case
from segtrt.predictor import CaseResult, Prediction, Predictor
from segtrt.batch.report import BatchReport, CaseRecord
from segtrt.runners.base import Runner
from segtrt.runners.torch_runner import TorchRunner
from segtrt.streaming import StreamChoice

SAMPLE_CT = Path(__file__).resolve().parents[1] / "sample_data" / "example_ct.nii.gz"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sample_model():
    return load_model(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def tall_ct() -> np.ndarray:
    """(1, 38, 101, 122): the sample CT and 8 of its slices mirrored on top. At 3.3 mm slices it becomes
    42 slices at the network's 3 mm, two rows of 32-slice windows (z 0 and 10); y and x are padded."""
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT))).astype(np.float32)
    return np.concatenate([ct, ct[::-1][:8]])[None]


def _predictor(model, **settings) -> Predictor:
    runners = [TorchRunner(network, CPU) for network in model.networks]
    return Predictor(model.folder, runners, PredictSettings(device="cpu", mirror=False, **settings),
                     model.mirror_axes, CPU)


def test_streamed_labels_match_whole_volume_on_the_sample(sample_model, tall_ct):
    spacing = (3.3, 3.0, 3.0)  # export resamples the logits back to 38 slices
    predictions = {}
    for stream in ("off", "on"):
        with _predictor(sample_model, stream=stream, save_probabilities=True) as predictor:
            predictions[stream] = predictor.predict_image(tall_ct, spacing)
    whole, streamed = predictions["off"], predictions["on"]
    assert not whole.aggregation.streamed and streamed.aggregation.streamed
    assert "stream=on requested" in streamed.aggregation.reason
    assert streamed.labels.shape == whole.labels.shape == tall_ct.shape[1:]
    assert len(np.unique(whole.labels)) >= 4, "the sample model should find several organs"
    # float16 host logits (and a different window batching, 1 vs 2 windows per call): measured 0.999994
    # (3 of 468,236 voxels differ)
    agreement = (streamed.labels == whole.labels).mean()
    assert agreement >= 0.9999, agreement
    # probabilities from float16 logits: measured max abs difference 5.8e-4
    np.testing.assert_allclose(streamed.probabilities, whole.probabilities, rtol=0, atol=3e-3)


def test_unknown_stream_mode_is_refused(sample_model):
    with pytest.raises(SegtrtError, match=r"stream \(--stream\) must be one of auto, on, off, got 'always'"):
        _predictor(sample_model, stream="always")


def test_cli_stream_flag():
    parser = build_parser()
    args = parser.parse_args(["predict", "ct.nii.gz", "-o", "out"])
    assert args.stream == "auto"
    assert parser.parse_args(["predict", "ct.nii.gz", "-o", "out", "--stream", "on"]).stream == "on"
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "ct.nii.gz", "-o", "out", "--stream", "maybe"])


def test_report_shows_the_aggregation(tmp_path: Path):
    choice = StreamChoice(True, 20 << 30, "z-streamed, float16 logits on the host (stream=auto: ...)")
    report = BatchReport(path=tmp_path / "r.json", settings={}, device={}, backend={}, model={},
                         cases=[CaseRecord("ct", "done", aggregation=choice)])
    case = json.loads(report.to_json())["cases"][0]
    assert case["aggregation"] == {"streamed": True, "accumulator_bytes": 20 << 30, "reason": choice.reason}


def test_read_case_and_write_case_are_the_host_steps(sample_model, tmp_path: Path):
    """read_case -> (image, geometry, seconds); write_case writes labels with that geometry and times it."""
    predictor = _predictor(sample_model)
    image, geometry, seconds = predictor.read_case(Case("ct", (SAMPLE_CT,)))
    assert image.shape == (1, *geometry.shape) and seconds > 0
    labels = (image[0] > 0).astype(np.uint8)
    prediction = Prediction(labels, None, seconds={"network": 1.0, "read": seconds})
    result = predictor.write_case(Case("ct", (SAMPLE_CT,)), prediction, geometry, tmp_path)
    assert result.ok and result.output == tmp_path / "ct.nii.gz" and result.probabilities is None
    assert list(result.seconds) == ["network", "read", "write"] and result.seconds["write"] > 0
    written = sitk.ReadImage(str(result.output))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)
    assert written.GetSpacing() == sitk.ReadImage(str(SAMPLE_CT)).GetSpacing()


def test_out_of_device_memory_is_one_line_with_the_settings_that_use_less(sample_model, tall_ct):
    def exhausted(batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 936.00 MiB")

    with _predictor(sample_model, batch_size=4) as predictor:
        for runner in predictor.runners:
            runner.infer_impl = exhausted
        with pytest.raises(DeviceMemoryError) as caught:
            predictor.predict_image(tall_ct, (3.3, 3.0, 3.0))
    message = str(caught.value)
    assert "\n" not in message and "out of cpu memory for an image of (1, 38, 101, 122) voxels" in message
    assert message.endswith("try --batch-size 2, --stream on, --accumulate float16")
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


class _FlagRunner(Runner):
    """Saves a process-wide flag on activation, sets its own, restores on deactivation (like TorchRunner
    with cudnn.benchmark); ``fail`` makes activation raise after it changed the flag."""

    name = "flag"
    flag = "original"

    def __init__(self, value: str, log: list, fail: bool = False) -> None:
        super().__init__("cpu")
        self.value, self.log, self.fail, self.saved = value, log, fail, None

    def activate_impl(self) -> None:
        self.saved, _FlagRunner.flag = _FlagRunner.flag, self.value
        self.log.append(f"on {self.value}")
        if self.fail:
            raise BackendUnavailableError(f"{self.value} cannot start")

    def deactivate_impl(self) -> None:
        if self.saved is not None:
            _FlagRunner.flag, self.saved = self.saved, None
            self.log.append(f"off {self.value}")

    def infer_impl(self, batch):
        return batch


def test_several_runners_restore_process_state_in_reverse_order(sample_model):
    log: list = []
    runners = [_FlagRunner("a", log), _FlagRunner("b", log)]
    with Predictor(sample_model.folder, runners, PredictSettings(device="cpu"), (), CPU):
        assert _FlagRunner.flag == "b"
    assert _FlagRunner.flag == "original" and log == ["on a", "on b", "off b", "off a"]


def test_runners_activated_before_a_failing_one_are_deactivated(sample_model):
    log: list = []
    runners = [_FlagRunner("a", log), _FlagRunner("b", log, fail=True), _FlagRunner("c", log)]
    with pytest.raises(BackendUnavailableError, match="b cannot start"):
        with Predictor(sample_model.folder, runners, PredictSettings(device="cpu"), (), CPU):
            pass
    assert log == ["on a", "on b", "off b", "off a"] and _FlagRunner.flag == "original"
    assert not any(r.is_active for r in runners)


class _NaNRunner(_FlagRunner):
    def infer_impl(self, batch):
        out = torch.zeros((batch.shape[0], 5, *batch.shape[2:]))
        out[:, :, 16, 50, 60] = float("nan")  # inside the image, not in the padding
        return out


def test_nonfinite_logits_are_refused_before_anything_is_written(sample_model, tmp_path):
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT))).astype(np.float32)[None]
    with Predictor(sample_model.folder, [_NaNRunner("nan", [])], PredictSettings(device="cpu", mirror=False), (),
                   CPU) as predictor:
        with pytest.raises(NonFiniteError, match=r"of .* logits are NaN or infinite.*nothing was written"):
            predictor.predict_image(ct, (3.0, 3.0, 3.0))


def test_fold_average_in_float16_does_not_overflow(sample_model):
    # five "folds" whose logits are each 6000 (max float16 65504): summed, 5 x 6000 x importance(10)
    # would overflow; averaged per call they stay at 6000 x importance
    class Big(_FlagRunner):
        def infer_impl(self, batch):
            return torch.full((batch.shape[0], 5, *batch.shape[2:]), 6000.0)

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT))).astype(np.float32)[None]
    settings = PredictSettings(device="cpu", mirror=False, accumulate_dtype="float16")
    with Predictor(sample_model.folder, [Big(str(i), []) for i in range(5)], settings, (), CPU) as predictor:
        prediction = predictor.predict_image(ct, (3.0, 3.0, 3.0))
    # one window covers the sample CT (weights <= 10): averaged logits 6000 x 10 < 65504; summed they were inf
    assert prediction.labels.shape == ct.shape[1:] and not prediction.labels.any()


class _CostlyFirstCall(Runner):
    """A real TorchRunner whose first call is declared costly (as a compiled one on CUDA); records each
    call's (shape, dtype, inference tensor?) and, with ``fail``, raises on its first call."""

    name = "costly"

    def __init__(self, network, fail: bool = False) -> None:
        super().__init__("cpu")
        self.inner, self.calls, self.fail = TorchRunner(network, CPU), [], fail

    @property
    def costly_first_call(self) -> bool:
        return True

    def activate_impl(self) -> None:
        self.inner.activate()

    def deactivate_impl(self) -> None:
        self.inner.deactivate()

    def infer_impl(self, batch):
        self.calls.append((tuple(batch.shape), batch.dtype, batch.is_inference()))
        if self.fail and len(self.calls) == 1:
            raise RuntimeError("compiler exploded\nsecond line")
        return self.inner.infer(batch)


def test_a_costly_first_call_is_made_at_activation_on_a_zero_batch(sample_model, tall_ct):
    plain = _predictor(sample_model, batch_size=3)
    with plain:
        expected = plain.predict_image(tall_ct, (3.3, 3.0, 3.0)).labels
        assert "warm_up" not in plain.startup_seconds()  # TorchRunner on the CPU: no costly first call
    runners = [_CostlyFirstCall(network) for network in sample_model.networks]
    predictor = Predictor(sample_model.folder, runners, PredictSettings(device="cpu", mirror=False, batch_size=3),
                          sample_model.mirror_axes, CPU)
    patch = tuple(sample_model.folder.patch_size)
    with predictor:
        assert [r.calls for r in runners] == [[((3, 1, *patch), torch.float32, True)]] * len(runners)
        predictor.activate()  # a second activate makes no second warm-up call
        assert all(len(r.calls) == 1 for r in runners)
        startup = predictor.startup_seconds()
        assert startup["warm_up"] == "done" and startup["warm_up_seconds"] >= 0
        labels = predictor.predict_image(tall_ct, (3.3, 3.0, 3.0)).labels
    np.testing.assert_array_equal(labels, expected)  # the warm-up leaves no trace in the answer
    assert all(len(r.calls) > 1 and all(c[2] for c in r.calls) for r in runners)


def test_a_failed_warm_up_is_reported_and_the_first_case_still_runs(sample_model, tall_ct, caplog):
    runners = [_CostlyFirstCall(network, fail=True) for network in sample_model.networks]
    predictor = Predictor(sample_model.folder, runners, PredictSettings(device="cpu", mirror=False),
                          sample_model.mirror_axes, CPU)
    with predictor:
        assert predictor.startup_seconds()["warm_up"] == "failed: RuntimeError: compiler exploded"
        assert "warming the network up before the first case failed" in caplog.text
        prediction = predictor.predict_image(tall_ct, (3.3, 3.0, 3.0))
    assert prediction.labels.shape == tall_ct.shape[1:]


def test_torch_runner_declares_a_costly_first_call_only_when_compiling_or_capturing_on_cuda(sample_model):
    network = sample_model.networks[0]
    assert not TorchRunner(network, CPU).costly_first_call
    assert not TorchRunner(network, CPU, compile_mode="default", batch_size=2).costly_first_call
    if torch.cuda.is_available():
        assert TorchRunner(network, "cuda", compile_mode="default", batch_size=2).costly_first_call
        assert TorchRunner(network, "cuda", cuda_graph=True, batch_size=2).costly_first_call
        assert not TorchRunner(network, "cuda").costly_first_call
