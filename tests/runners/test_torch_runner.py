"""TorchRunner: eager, compiled and CUDA-graph paths give the network's own answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtrt.errors import BackendUnavailableError
from segtrt.runners.torch_runner import TorchRunner


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.InstanceNorm3d(4, affine=True),
        torch.nn.LeakyReLU(0.01),
        torch.nn.Conv3d(4, 3, 1),
    )


def test_eager_matches_network_and_has_no_static_batch():
    net = _net()
    x = torch.randn(2, 1, 8, 8, 8)
    with TorchRunner(net, "cpu") as runner:
        out = runner.infer(x)
        assert runner.fixed_batch_size is None
        assert runner.describe()["path"] == "eager"
    with torch.no_grad():
        np.testing.assert_array_equal(out.numpy(), net(x).numpy())


def test_rejects_unknown_compile_mode_and_cpu_graphs():
    with pytest.raises(BackendUnavailableError, match="--compile must be one of"):
        TorchRunner(_net(), "cpu", compile_mode="fastest")
    with pytest.raises(BackendUnavailableError, match="needs a CUDA device"):
        TorchRunner(_net(), "cpu", cuda_graph=True)


@pytest.mark.slow
def test_compiled_matches_eager_on_cpu(tmp_path, monkeypatch):
    # inductor's CPU code generation: same maths, other kernels; fp32 reassociation stays ~1e-6 of the logits
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    net = _net()
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        expected = net(x).numpy()
    with TorchRunner(net, "cpu", compile_mode="default", batch_size=2) as runner:
        assert runner.fixed_batch_size == 2
        out = runner.infer(x).numpy()
        assert runner.describe()["path"] == "compile:default"
        assert runner.first_call_seconds is not None
    torch._dynamo.reset()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert any((tmp_path / "inductor").iterdir()), "inductor wrote no on-disk cache"


@pytest.mark.gpu
def test_cuda_graph_replays_eager_answer():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    net = _net().cuda()
    x = torch.randn(2, 1, 16, 16, 16, device="cuda")
    flag = torch.backends.cudnn.benchmark
    with TorchRunner(net, "cuda", "fp16", cuda_graph=True, batch_size=2) as runner:
        first = runner.infer(x).float().clone()
        second = runner.infer(x * 2).float().clone()
        assert runner.fixed_batch_size == 2
    assert torch.backends.cudnn.benchmark == flag  # restored
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        np.testing.assert_allclose(first.cpu().numpy(), net(x).float().cpu().numpy(), atol=2e-2, rtol=2e-2)
        np.testing.assert_allclose(second.cpu().numpy(), net(x * 2).float().cpu().numpy(), atol=2e-2, rtol=2e-2)
