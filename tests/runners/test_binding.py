"""Device-buffer helpers shared by the ONNX Runtime and TensorRT runners."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtrt.runners.binding import (
    ONNX_TO_TORCH,
    KeepAlive,
    OutputBuffers,
    SideStream,
    as_bindable,
    numpy_dtype,
    torch_dtype,
)


class FakeTrtDataType:
    """Stands in for tensorrt.DataType members, which are identified by ``.name``."""

    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (torch.float16, torch.float16),
        (np.float32, torch.float32),
        (np.dtype("float16"), torch.float16),
        ("float32", torch.float32),
        (1, torch.float32),
        (10, torch.float16),
        (np.int64(7), torch.int64),
        ("tensor(float16)", torch.float16),
        ("tensor(float)", torch.float32),
        (FakeTrtDataType("HALF"), torch.float16),
        (FakeTrtDataType("FLOAT"), torch.float32),
        (FakeTrtDataType("INT32"), torch.int32),
    ],
)
def test_torch_dtype_accepts_every_spelling(spec, expected):
    assert torch_dtype(spec) == expected


def test_onnx_numbers_match_onnx_itself():
    import onnx
    for number, dtype in ONNX_TO_TORCH.items():
        if dtype == torch.bfloat16:
            continue  # numpy has no bfloat16
        expected = torch.from_numpy(np.zeros(1, dtype=onnx.helper.tensor_dtype_to_np_dtype(number))).dtype
        assert dtype == expected


@pytest.mark.parametrize("bad", [99, "tensor(string)", object(), True])
def test_torch_dtype_rejects_unknown_types(bad):
    with pytest.raises(TypeError):
        torch_dtype(bad)


def test_numpy_dtype_round_trips():
    for dtype in (torch.float32, torch.float16, torch.int64, torch.uint8):
        assert torch_dtype(numpy_dtype(dtype)) == dtype
    with pytest.raises(TypeError):
        numpy_dtype(torch.complex64)


def test_output_buffers_reuse_until_shape_or_dtype_changes():
    buffers = OutputBuffers("cpu")
    a = buffers.get("out", (2, 3), torch.float32)
    assert buffers.get("out", [2, 3], torch.float32) is a
    b = buffers.get("out", (1, 3), torch.float32)
    assert b is not a and b.shape == (1, 3)
    c = buffers.get("out", (1, 3), torch.float16)
    assert c.dtype == torch.float16 and "out" in buffers
    buffers.release()
    assert "out" not in buffers


def test_keep_alive_holds_references_until_cleared():
    keep = KeepAlive()
    t = keep.hold(torch.ones(3))
    assert len(keep) == 1 and t.sum() == 3
    keep.clear()
    assert len(keep) == 0


def test_as_bindable_copies_only_when_needed():
    x = torch.randn(2, 3)
    assert as_bindable(x, torch.float32).data_ptr() == x.data_ptr()
    y = as_bindable(x.t(), torch.float32)
    assert y.is_contiguous() and torch.equal(y, x.t())
    assert as_bindable(x, torch.float16).dtype == torch.float16


def test_side_stream_is_a_no_op_on_the_cpu():
    side = SideStream("cpu")
    assert side.stream is None and side.handle == 0
    with side.ordered() as handle:
        assert handle == 0


@pytest.mark.gpu
def test_side_stream_orders_work_with_the_callers_stream():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    side = SideStream("cuda")
    x = torch.zeros(1 << 22, device="cuda")
    x += 1  # queued on the caller's stream
    with side.ordered() as handle:
        assert handle == side.stream.cuda_stream != 0
        assert torch.cuda.current_stream() == side.stream
        y = x * 2  # runs on the side stream after the caller's work
    assert torch.cuda.current_stream() != side.stream
    assert float(y.sum()) == 2.0 * x.numel()
