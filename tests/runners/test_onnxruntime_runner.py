"""OnnxRuntimeRunner on small hand-built ONNX graphs (Conv3d -> InstanceNorm -> LeakyReLU).

The reference is the same computation in torch.nn.functional with the same weights. The graphs are
built with onnx.helper, so these tests do not depend on the torch exporter and run in well under a
second each; segtrt.export's graphs are run through this runner in tests/test_export.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from segtrt.errors import BackendUnavailableError, SegtrtError  # noqa: E402
from segtrt.runners.onnxruntime_runner import OnnxRuntimeRunner, require_provider  # noqa: E402

IN_CH, OUT_CH, PATCH = 2, 3, (4, 6, 6)


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(0, 0.3, (OUT_CH, IN_CH, 3, 3, 3)).astype(np.float32),
        "b": rng.normal(0, 0.1, OUT_CH).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, OUT_CH).astype(np.float32),
        "shift": rng.normal(0, 0.1, OUT_CH).astype(np.float32),
    }


def write_graph(path, weights, *, batch: int | str = "batch", io_type: int = TensorProto.FLOAT,
                metadata: dict | None = None, two_outputs: bool = False) -> None:
    """Conv(3x3x3, pad 1) -> InstanceNormalization -> LeakyRelu(0.01); optional fp16 I/O via Casts."""
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    nodes, first = [], "image"
    if io_type == TensorProto.FLOAT16:
        nodes.append(helper.make_node("Cast", ["image"], ["image32"], to=TensorProto.FLOAT))
        first = "image32"
    nodes += [
        helper.make_node("Conv", [first, "w", "b"], ["c"], pads=[1] * 6, kernel_shape=[3, 3, 3]),
        helper.make_node("InstanceNormalization", ["c", "scale", "shift"], ["n"], epsilon=1e-5),
        helper.make_node("LeakyRelu", ["n"], ["act"], alpha=0.01),
        helper.make_node("Cast", ["act"], ["logits"], to=io_type),
    ]
    outputs = [helper.make_tensor_value_info("logits", io_type, [batch, OUT_CH, *PATCH])]
    if two_outputs:
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, [batch, OUT_CH, *PATCH]))
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("image", io_type, [batch, IN_CH, *PATCH])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, {f"segtrt.{k}": json.dumps(v) for k, v in metadata.items()})
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def reference(x: torch.Tensor, weights: dict[str, np.ndarray]) -> torch.Tensor:
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    y = torch.nn.functional.conv3d(x, w["w"], w["b"], padding=1)
    y = torch.nn.functional.instance_norm(y, weight=w["scale"], bias=w["shift"], eps=1e-5)
    return torch.nn.functional.leaky_relu(y, 0.01)


@pytest.fixture
def weights():
    return make_weights()


@pytest.fixture
def dynamic_graph(tmp_path, weights):
    path = tmp_path / "dynamic.onnx"
    write_graph(path, weights, metadata={"precision": "fp32", "fold": 0})
    return path


def test_cpu_matches_torch_at_several_batch_sizes(dynamic_graph, weights):
    with OnnxRuntimeRunner(dynamic_graph, "cpu") as runner:
        assert runner.fixed_batch_size is None and runner.max_batch_size is None
        for n in (1, 2, 3):
            x = torch.randn(n, IN_CH, *PATCH, generator=torch.Generator().manual_seed(n))
            out = runner(x)
            assert out.shape == (n, OUT_CH, *PATCH) and out.dtype == torch.float32 and out.device.type == "cpu"
            # measured max |diff| 1.2e-6 (float32 rounding of conv and norm); 1e-5 leaves 8x headroom
            np.testing.assert_allclose(out.numpy(), reference(x, weights).numpy(), rtol=1e-5, atol=1e-5)


def test_output_buffer_is_reused_for_the_same_shape_and_replaced_for_another(dynamic_graph):
    with OnnxRuntimeRunner(dynamic_graph, "cpu") as runner:
        first = runner(torch.randn(2, IN_CH, *PATCH))
        ptr, values = first.data_ptr(), first.clone()
        second = runner(torch.randn(2, IN_CH, *PATCH))
        assert second.data_ptr() == ptr  # preallocated output, written in place by IO binding
        assert not torch.equal(second, values)
        third = runner(torch.randn(1, IN_CH, *PATCH))
        assert third.shape[0] == 1


def test_non_contiguous_and_float64_inputs_are_bound_correctly(dynamic_graph, weights):
    x = torch.randn(2, IN_CH, PATCH[2], PATCH[1], PATCH[0], dtype=torch.float64).permute(0, 1, 4, 3, 2)
    assert not x.is_contiguous()
    with OnnxRuntimeRunner(dynamic_graph, "cpu") as runner:
        out = runner(x)
    np.testing.assert_allclose(out.numpy(), reference(x.float(), weights).numpy(), rtol=1e-5, atol=1e-5)


def test_static_batch_graph_sets_fixed_batch_size(tmp_path, weights):
    path = tmp_path / "static.onnx"
    write_graph(path, weights, batch=2)
    with OnnxRuntimeRunner(path, "cpu") as runner:
        assert runner.fixed_batch_size == 2 and runner.max_batch_size == 2
        out = runner(torch.randn(2, IN_CH, *PATCH))
        assert out.shape == (2, OUT_CH, *PATCH)
        with pytest.raises(SegtrtError, match="static batch of 2"):
            runner(torch.randn(3, IN_CH, *PATCH))


@pytest.mark.parametrize("shape", [(1, IN_CH + 1, *PATCH), (1, IN_CH, 4, 6, 8), (IN_CH, *PATCH)])
def test_patches_that_do_not_fit_the_graph_are_refused(dynamic_graph, shape):
    with OnnxRuntimeRunner(dynamic_graph, "cpu") as runner:
        with pytest.raises(SegtrtError, match="takes patches of shape"):
            runner(torch.randn(*shape))


def test_float16_io_graph_returns_float16(tmp_path, weights):
    path = tmp_path / "half_io.onnx"
    write_graph(path, weights, io_type=TensorProto.FLOAT16)
    x = torch.randn(1, IN_CH, *PATCH)
    with OnnxRuntimeRunner(path, "cpu") as runner:
        out = runner(x)
    assert out.dtype == torch.float16
    expected = reference(x.half().float(), weights)
    # the only fp16 steps are the I/O casts: measured max |diff| 1.0e-3 at |y| <= 4.6 (half an fp16 ulp)
    np.testing.assert_allclose(out.float().numpy(), expected.numpy(), rtol=5e-4, atol=2e-3)


def test_metadata_and_describe(dynamic_graph):
    runner = OnnxRuntimeRunner(dynamic_graph, "cpu")
    with runner:
        assert runner.metadata == {"precision": "fp32", "fold": 0}
        info = runner.describe()
    assert info["backend"] == "onnxruntime" and info["provider"] == "cpu"
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["precision"] == "fp32" and info["fold"] == 0
    assert runner.session is None  # released by deactivate


def test_graph_with_two_outputs_is_refused(tmp_path, weights):
    path = tmp_path / "two.onnx"
    write_graph(path, weights, two_outputs=True)
    with pytest.raises(SegtrtError, match="one \\(N, C, Z, Y, X\\) input"):
        OnnxRuntimeRunner(path, "cpu").activate()


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(SegtrtError, match="does not exist"):
        OnnxRuntimeRunner(tmp_path / "nope.onnx", "cpu")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(SegtrtError, match="cannot load"):
        OnnxRuntimeRunner(bad, "cpu").activate()


def test_unavailable_provider_names_the_available_ones(dynamic_graph):
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("this onnxruntime has the CUDA provider; the refusal cannot be shown here")
    runner = OnnxRuntimeRunner(dynamic_graph, "cuda")  # constructing needs no GPU
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider.*CPUExecutionProvider"):
        runner.activate()
    assert not runner.is_active


@pytest.mark.parametrize(
    ("provider", "device", "message"),
    [("cpu", "cuda", "cannot run on device cuda"), ("cuda", "cpu", "cannot run on device cpu"),
     ("rocm", "cpu", "must be one of")],
)
def test_provider_and_device_must_match(dynamic_graph, provider, device, message):
    with pytest.raises(BackendUnavailableError, match=message):
        OnnxRuntimeRunner(dynamic_graph, device, provider=provider)


def test_silent_provider_fallback_is_an_error():
    # what ONNX Runtime does when the CUDA libraries fail to load: the session quietly runs on the CPU
    with pytest.raises(BackendUnavailableError, match="did not enable CUDAExecutionProvider.*session providers: "
                                                      "CPUExecutionProvider"):
        require_provider("CUDAExecutionProvider", ["CPUExecutionProvider"],
                         ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="none"):
        require_provider("CUDAExecutionProvider", [], ["CPUExecutionProvider"])
    require_provider("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"], [])


@pytest.mark.gpu
def test_cuda_provider_with_io_binding_on_device_tensors(dynamic_graph, weights):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (CUDAExecutionProvider)")
    x = torch.randn(3, IN_CH, *PATCH, device="cuda")
    caller = torch.cuda.Stream()
    with OnnxRuntimeRunner(dynamic_graph, "cuda") as runner, torch.cuda.stream(caller):
        assert runner.session.get_providers()[0] == "CUDAExecutionProvider"
        out = runner(x * 2)  # produced on the caller's stream: the runner must wait for it
        ptr = out.data_ptr()
        result = out.clone()
        again = runner(x * 2)
        assert again.data_ptr() == ptr and again.device.type == "cuda"
    torch.cuda.synchronize()
    # fp32 on cuDNN with TF32 off (use_tf32=0); passed on an H100 with onnxruntime-gpu 1.31.1, where
    # segtrt's exported U-Nets differed from torch by <= 7.6e-7 max|ref| through this same path
    np.testing.assert_allclose(result.cpu().numpy(), reference((x * 2).cpu(), weights).numpy(), rtol=1e-4, atol=1e-4)


def test_a_gpu_provider_that_cannot_start_reports_the_root_cause(tmp_path):
    # what onnxruntime-gpu does without the TensorRT libraries: the provider's RuntimeError, then a
    # failed retry with its fallback providers (CPU fallback is disabled by the runner)
    from types import SimpleNamespace

    from segtrt.runners.onnxruntime_runner import _create_session

    class InvalidArgument(Exception):
        pass

    def session(*args, **kwargs):
        try:
            raise RuntimeError("Please install TensorRT libraries as mentioned in the GPU requirements page")
        except RuntimeError as cause:
            raise InvalidArgument("Conflicting session configuration") from cause

    state = SimpleNamespace(InvalidArgument=InvalidArgument)
    fake_ort = SimpleNamespace(capi=SimpleNamespace(onnxruntime_pybind11_state=state), InferenceSession=session)
    with pytest.raises(BackendUnavailableError, match="could not start TensorrtExecutionProvider.*install TensorRT"):
        _create_session(fake_ort, tmp_path / "m.onnx", None, [("TensorrtExecutionProvider", {})])
    with pytest.raises(SegtrtError, match="cannot load"):
        _create_session(fake_ort, tmp_path / "m.onnx", None, [("CPUExecutionProvider", {})])
