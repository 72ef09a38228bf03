"""TensorRTRunner.

Three kinds of test, kept apart:

- Real engine execution (``@pytest.mark.tensorrt``): build the engine here, run it through the runner
  and compare with the torch network. Skips with the reason when no TensorRT runtime on this machine can
  execute (no CUDA GPU; TensorRT-RTX on a GPU it does not support, e.g. Hopper cc 9.0; no full TensorRT).
- Real behaviour that needs no execution: metadata read at construction, refusals with TensorRT's reason.
- ``RecordingContextDouble``: a TEST DOUBLE for the four execution-context calls ``EngineBindings``
  makes. It checks the runner's bookkeeping (shapes set per call, buffers allocated in the engine's
  dtypes, addresses bound to live tensors) and proves nothing about TensorRT itself.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from torch import nn

import tensorrt_rtx  # noqa: F401  (TensorRT-RTX, a test dependency, builds the plans: missing = failure)

from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from segtrt.engine.build import BuildOptions  # noqa: E402
from segtrt.engine.cache import get_or_build  # noqa: E402
from segtrt.engine.flavors import load_flavor  # noqa: E402
from segtrt.errors import BackendUnavailableError, EngineError  # noqa: E402
from segtrt.export import export_onnx  # noqa: E402
from segtrt.runners.tensorrt_runner import EngineBindings, TensorRTRunner  # noqa: E402

PATCH = (16, 32, 32)  # (z, y, x) voxels
NUM_CLASSES = 3
RTX = "tensorrt-rtx"


def tiny_unet() -> nn.Module:
    """PlainConvUNet, 3 stages (8, 16, 32), InstanceNorm3d + LeakyReLU, 1 input channel, 3 classes."""
    torch.manual_seed(0)
    return PlainConvUNet(
        1, 3, (8, 16, 32), nn.Conv3d, 3, (1, 2, 2), 2, NUM_CLASSES, 1, True, nn.InstanceNorm3d,
        {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
    ).eval()


def export(path: Path, *, dynamic: bool, precision: str = "fp32") -> Path:
    """segtrt's exporter (input 'image'), without its ONNX Runtime check (covered by its own tests)."""
    export_onnx(tiny_unet(), path, patch_size=PATCH, in_channels=1, dynamic_batch=dynamic, precision=precision,
                check=False)
    return path


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "static": export(folder / "static.onnx", dynamic=False),
        "dynamic": export(folder / "dynamic.onnx", dynamic=True),
    }


# --- real behaviour without execution ---------------------------------------------------------
def test_metadata_gives_flavor_and_batch_limits_before_activation(onnx_files, tmp_path):
    dynamic = get_or_build(onnx_files["dynamic"], BuildOptions(max_batch=3, flavor=RTX), tmp_path)
    static = get_or_build(onnx_files["static"], BuildOptions(flavor=RTX), tmp_path)
    runner = TensorRTRunner(dynamic.plan_path, "cuda")
    assert (runner.flavor_name, runner.max_batch_size, runner.fixed_batch_size) == (RTX, 3, None)
    runner = TensorRTRunner(static.plan_path, "cuda")
    assert (runner.max_batch_size, runner.fixed_batch_size) == (1, 1)
    assert runner.describe()["io"] == [spec.as_dict() for spec in static.metadata.io]


def test_cpu_device_is_refused(onnx_files, tmp_path):
    cached = get_or_build(onnx_files["static"], BuildOptions(flavor=RTX), tmp_path)
    with pytest.raises(BackendUnavailableError, match="CUDA devices only, got device 'cpu'"):
        TensorRTRunner(cached.plan_path, "cpu").activate()


def test_unloadable_engine_is_refused_with_tensorrt_reason(onnx_files, tmp_path):
    cached = get_or_build(onnx_files["static"], BuildOptions(flavor=RTX), tmp_path)
    runner = TensorRTRunner(cached.plan_path, "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="torch sees no CUDA device"):
            runner.activate()
        return
    if load_flavor(RTX).runtime_supports(torch.cuda.get_device_capability()):
        pytest.skip("TensorRT-RTX runs on this GPU: the refusal cannot be provoked here")
    with pytest.raises(BackendUnavailableError, match="cannot load this engine on this machine: .*compute capability"):
        runner.activate()
    assert not runner.is_active


def _runner_with_context(context) -> TensorRTRunner:
    """A runner whose execution context is ``context`` (no engine, no GPU): for the API guards."""
    runner = TensorRTRunner.__new__(TensorRTRunner)
    runner._context = context
    runner._loaded = types.SimpleNamespace(flavor=types.SimpleNamespace(label="TensorRT 10.16.0"))
    return runner


def test_cuda_graph_capture_is_refused_where_tensorrt_cannot_tell():
    # TensorRT 10.16's Python IExecutionContext has no is_stream_capturable: no AttributeError mid-case
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 10\.16\.0 cannot say whether .*cuda_graph=False"):
        _runner_with_context(types.SimpleNamespace())._check_capturable(0)
    refusing = types.SimpleNamespace(is_stream_capturable=lambda handle: False)
    with pytest.raises(BackendUnavailableError, match="cannot be captured"):
        _runner_with_context(refusing)._check_capturable(0)
    _runner_with_context(types.SimpleNamespace(is_stream_capturable=lambda handle: True))._check_capturable(0)


def test_missing_engine_file_is_a_user_error(tmp_path):
    with pytest.raises(EngineError, match="absent.engine does not exist"):
        TensorRTRunner(tmp_path / "absent.engine", "cuda", flavor=RTX)


# --- test double for the bookkeeping ------------------------------------------------------------
class RecordingContextDouble:
    """TEST DOUBLE (not TensorRT): answers ``set_input_shape`` / ``get_tensor_shape`` /
    ``set_tensor_address`` like an execution context whose output has ``NUM_CLASSES`` channels and
    whose profile allows batches up to ``max_batch``, and records every call."""

    def __init__(self, max_batch: int = 4) -> None:
        self.max_batch = max_batch
        self.shape_calls: list[tuple[str, tuple[int, ...]]] = []
        self.addresses: dict[str, int] = {}
        self.input_shape: tuple[int, ...] | None = None

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape_calls.append((name, shape))
        if shape[0] > self.max_batch:
            return False
        self.input_shape = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.input_shape[0], NUM_CLASSES, *self.input_shape[2:])

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address


def make_bindings(per_shape: bool = False, input_dtype=torch.float16) -> tuple[EngineBindings, RecordingContextDouble]:
    double = RecordingContextDouble()
    bindings = EngineBindings(double, ("input", input_dtype), ("logits", torch.float32), torch.device("cpu"), per_shape)
    return bindings, double


def test_bindings_use_engine_dtypes_and_bind_live_buffers():
    bindings, double = make_bindings()
    inp, out = bindings.bind((2, 1, *PATCH))
    assert (inp.dtype, tuple(inp.shape)) == (torch.float16, (2, 1, *PATCH))
    assert (out.dtype, tuple(out.shape)) == (torch.float32, (2, NUM_CLASSES, *PATCH))
    assert double.addresses == {"input": inp.data_ptr(), "logits": out.data_ptr()}
    assert inp.is_contiguous() and out.is_contiguous()


def test_bindings_set_shape_only_when_it_changes_and_reuse_buffers():
    bindings, double = make_bindings()
    first = bindings.bind((2, 1, *PATCH))
    again = bindings.bind((2, 1, *PATCH))
    assert [t.data_ptr() for t in first] == [t.data_ptr() for t in again]
    assert double.shape_calls == [("input", (2, 1, *PATCH))]
    smaller = bindings.bind((1, 1, *PATCH))
    assert double.shape_calls[-1] == ("input", (1, 1, *PATCH)) and len(double.shape_calls) == 2
    assert double.addresses == {"input": smaller[0].data_ptr(), "logits": smaller[1].data_ptr()}


def test_per_shape_bindings_keep_every_shape_alive():
    """With CUDA graphs each batch size keeps its buffers: a captured graph's addresses stay valid."""
    bindings, double = make_bindings(per_shape=True)
    two = bindings.bind((2, 1, *PATCH))
    one = bindings.bind((1, 1, *PATCH))
    two_again = bindings.bind((2, 1, *PATCH))
    assert [t.data_ptr() for t in two] == [t.data_ptr() for t in two_again]
    assert {t.data_ptr() for t in one}.isdisjoint(t.data_ptr() for t in two)


def test_bindings_report_rejected_shape():
    bindings, _ = make_bindings()
    with pytest.raises(EngineError, match=r"rejected input shape \(5, 1, 16, 32, 32\)"):
        bindings.bind((5, 1, *PATCH))


# --- real execution -------------------------------------------------------------------------------
def executable_flavor() -> str:
    """A flavor whose runtime can execute on this GPU, or pytest.skip with the reason."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: no TensorRT runtime can execute an engine on this machine")
    cc = torch.cuda.get_device_capability()
    reasons = []
    for name in ("tensorrt", RTX):
        try:
            flavor = load_flavor(name)
        except BackendUnavailableError as exc:
            reasons.append(str(exc))
            continue
        if flavor.runtime_supports(cc) is not False:
            return name
        reasons.append(f"{flavor.label} does not run on compute capability {cc[0]}.{cc[1]}")
    pytest.skip("no TensorRT runtime here executes on this GPU: " + "; ".join(reasons))


def relative_max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).abs().max() / expected.float().abs().max())


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_matches_torch_on_a_side_stream(tmp_path, precision, cuda_graph):
    flavor = executable_flavor()
    network = tiny_unet()
    onnx_path = export(tmp_path / "net.onnx", dynamic=True, precision=precision)
    cached = get_or_build(onnx_path, BuildOptions(max_batch=3, flavor=flavor), tmp_path / "engines")
    device = torch.device("cuda")
    network = network.to(device)
    caller = torch.cuda.Stream(device)
    with TensorRTRunner(cached.plan_path, device, cuda_graph=cuda_graph) as runner:
        for batch in (3, 1, 3, 2):  # shape changes and repeats (graph replay)
            with torch.cuda.stream(caller):
                x = torch.randn(batch, 1, *PATCH, device=device)
                logits = runner(x).clone()  # read on the caller's stream, ordered after the engine
                with torch.no_grad():
                    expected = network(x)
            caller.synchronize()
            assert logits.shape == (batch, NUM_CLASSES, *PATCH) and logits.dtype == torch.float32
            # Not measured here (no machine we have executes a TensorRT engine). Bound: TF32/fp16
            # convolutions; FACTS.md measured 1.75e-3 relative error for fp16 vs fp32 on the CT U-Net.
            assert relative_max_error(logits, expected) < (1e-2 if precision == "fp16" else 5e-3)
        with pytest.raises(EngineError, match="outside the engine's profile"):
            runner(torch.randn(4, 1, *PATCH, device=device))
