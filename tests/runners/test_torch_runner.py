"""TorchRunner: eager, compiled and CUDA-graph paths give the network's own answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtrt.errors import BackendUnavailableError
from segtrt.runners.torch_runner import TorchRunner
from tiny_nets import batch_and_eager, conv_net as _net


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
def test_compiled_matches_eager_on_cpu(tmp_path, compile_caches):
    # inductor's CPU code generation: same maths, other kernels; fp32 reassociation stays ~1e-6 of the logits
    net = _net()
    x, expected = batch_and_eager(net)
    with TorchRunner(net, "cpu", compile_mode="default", batch_size=2) as runner:
        assert runner.fixed_batch_size == 2
        out = runner.infer(x).numpy()
        assert runner.describe()["path"] == "compile:default"
        assert runner.first_call_seconds is not None
        compiled = runner.describe()["compiled"]
        assert compiled["start"] == "cold" and compiled["compile_workers"] == "inductor pool", compiled
    torch._dynamo.reset()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert any((tmp_path / "inductor").iterdir()), "inductor wrote no on-disk cache"
    assert len(list((tmp_path / "segtrt" / "compiled" / "warm").glob("*.json"))) == 1, "no record of the compile"
    with TorchRunner(net, "cpu", compile_mode="default", batch_size=2) as runner:  # as a later process would
        again = runner.infer(x).numpy()
        compiled = runner.describe()["compiled"]
        # segtrt's record says the cache is warm: no pool of compile workers is started
        assert compiled["start"] == "warm" and compiled["compile_workers"] == "in-process", compiled
    torch._dynamo.reset()
    np.testing.assert_array_equal(again, out)


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


# channels-last -------------------------------------------------------------------------------------------


def _unet(kind: str, in_channels: int = 1) -> torch.nn.Module:
    """A small PlainConvUNet / ResidualEncoderUNet (3 stages, 4..16 features) with seeded weights."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    common = dict(input_channels=in_channels, n_stages=3, features_per_stage=(4, 8, 16), conv_op=torch.nn.Conv3d,
                  kernel_sizes=3, strides=(1, 2, 2), num_classes=3, n_conv_per_stage_decoder=(1, 1),
                  conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    torch.manual_seed(0)
    if kind == "plain":
        net = PlainConvUNet(n_conv_per_stage=(2, 2, 2), **common)
    else:
        net = ResidualEncoderUNet(n_blocks_per_stage=(1, 2, 2), **common)
    return net.eval()


@pytest.mark.parametrize("kind", ["plain", "resenc"])
@pytest.mark.parametrize("in_channels", [1, 2])
def test_channels_last_eager_matches_ncdhw_on_cpu(kind, in_channels):
    # measured max |diff| / max |logit| on two cores: ~1e-7 (another summation order in the convolutions)
    net = _unet(kind, in_channels)
    x = torch.randn(3, in_channels, 16, 16, 16)
    with torch.no_grad():
        expected = net(x).numpy()
    with TorchRunner(net, "cpu", channels_last=True) as runner:
        out = runner.infer(x)
        assert runner.describe()["layout"] == "channels_last_3d"
        assert next(p for p in net.parameters() if p.dim() == 5).is_contiguous(memory_format=torch.channels_last_3d)
    assert out.is_contiguous(), "logits must come back NCDHW-contiguous for aggregation"
    assert all(p.is_contiguous() for p in net.parameters()), "deactivate() restores the network's layout"
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_freeze_is_auto_only_for_torch_compile_on_cuda():
    assert TorchRunner(_net(), "cpu").freeze is False
    assert TorchRunner(_net(), "cpu", compile_mode="default", batch_size=2).freeze is False
    assert TorchRunner(_net(), "cpu", compile_mode="default", batch_size=2, freeze=True).freeze
    with pytest.raises(BackendUnavailableError, match="--freeze on applies to"):
        TorchRunner(_net(), "cpu", freeze=True)
    with pytest.raises(BackendUnavailableError, match="--freeze on applies to"):
        TorchRunner(_net(), "cpu", compile_mode="default", ahead_of_time=True, freeze=True)


def test_half_weights_only_with_fp16_packages_included():
    assert TorchRunner(_net(), "cpu").half_weights is False
    assert TorchRunner(_net(), "cpu", compile_mode="default", batch_size=2).half_weights is False
    with pytest.raises(BackendUnavailableError, match="--half-weights on applies to --precision fp16"):
        TorchRunner(_net(), "cpu", half_weights=True)
    with pytest.raises(BackendUnavailableError, match="--half-weights on applies to --precision fp16"):
        TorchRunner(_net(), "cpu", compile_mode="default", ahead_of_time=True, half_weights=True)


def test_channels_last_is_auto_only_for_compiled_cuda():
    assert TorchRunner(_net(), "cpu").channels_last is False
    assert TorchRunner(_net(), "cpu", compile_mode="default", batch_size=2).channels_last is False
    assert TorchRunner(_net(), "cpu", compile_mode="default", batch_size=2, channels_last=True).channels_last
    assert TorchRunner(_net(), "cpu").describe()["layout"] == "ncdhw"
    with pytest.raises(BackendUnavailableError, match="needs a compile mode"):
        TorchRunner(_net(), "cpu", ahead_of_time=True)


def test_channels_last_mirrored_sliding_window_matches_ncdhw():
    from segtrt.sliding import SlidingWindowOptions, sliding_window_logits

    net = _unet("plain")
    data = torch.randn(1, 20, 24, 18)
    options = SlidingWindowOptions(patch_size=(16, 16, 16), num_classes=3, mirror_axes=(0, 1, 2), batch_size=2)
    with torch.no_grad(), TorchRunner(net, "cpu") as plain:
        expected = sliding_window_logits(data, [plain], options).numpy()
    with torch.no_grad(), TorchRunner(net, "cpu", channels_last=True) as last:
        out = sliding_window_logits(data, [last], options).numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow
def test_channels_last_compiled_matches_eager_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    net = _unet("resenc", 2)
    x = torch.randn(2, 2, 16, 16, 16)
    with torch.no_grad():
        expected = net(x).numpy()
    with TorchRunner(net, "cpu", compile_mode="default", batch_size=2, channels_last=True) as runner:
        out = runner.infer(x)
        assert runner.describe()["path"] == "compile:default"
    torch._dynamo.reset()
    assert out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize(("half_weights", "freeze"), [(None, None), (False, None), (True, True)])
def test_channels_last_compiled_fp16_matches_eager_fp32_on_cuda(tmp_path, monkeypatch, half_weights, freeze):
    # H200, default CT U-Net: 1.8e-3 of the largest logit (fp16 autocast vs fp32); 2e-2 leaves room for small nets
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    net = _unet("plain").cuda()
    weights = {name: value.clone() for name, value in net.state_dict().items()}
    x = torch.randn(2, 1, 32, 32, 32, device="cuda")
    with torch.inference_mode():
        expected = net(x).float().cpu().numpy()
    with TorchRunner(net, "cuda", "fp16", compile_mode="default", batch_size=2, half_weights=half_weights,
                     freeze=freeze) as runner:
        described = runner.describe()
        assert runner.channels_last and described["layout"] == "channels_last_3d"
        # auto: an fp16 copy of the weights, not frozen; without the copy, auto freezes
        assert described["weights"] == ("fp32 (autocast)" if half_weights is False else "fp16 copy")
        assert described["frozen_weights"] is (half_weights is False or freeze is True)
        out = runner.infer(x)
        assert out.is_contiguous() and out.dtype == torch.float16
    torch._dynamo.reset()
    np.testing.assert_allclose(out.float().cpu().numpy(), expected, rtol=0, atol=2e-2 * np.abs(expected).max())
    for name, value in net.state_dict().items():  # the fp32 network itself is left as it was
        assert value.dtype == weights[name].dtype and torch.equal(value, weights[name]), name


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_graph_over_compiled_network_replays_its_answer(tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "segtrt"))
    net = _unet("plain").cuda()
    first, second = (torch.randn(2, 1, 32, 32, 32, device="cuda") for _ in range(2))
    with TorchRunner(net, "cuda", "fp16", compile_mode="default", batch_size=2, cuda_graph=True) as runner:
        assert runner.describe()["path"] == "compile:default+cuda-graph"
        compiled_first = runner.infer(first).clone()  # the compiling call runs outside a graph
        replayed = [runner.infer(x).clone() for x in (second, first)]  # captured once, then replayed
        assert len(runner._graphs) == 1
    torch._dynamo.reset()
    torch.testing.assert_close(replayed[1], compiled_first, rtol=0, atol=0)  # same kernels, same answer
    assert not torch.equal(replayed[0], replayed[1])


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize(("precision", "half_weights", "channels_last", "weights", "tolerance"), [
    # fp16 with autocast or (auto) an fp16 weight copy: the compiled path's tolerance (H200 CT U-Net: 1.8e-3)
    ("fp16", False, None, "fp32 (autocast)", 2e-2),
    ("fp16", None, None, "fp16 copy", 2e-2),
    # fp32 (segtrt predict's default): eager and package both use cuDNN's TF32 convolutions (H200: 1.4e-3)
    ("fp32", None, True, None, 5e-3),
    ("fp32", None, False, None, 5e-3),
])
def test_ahead_of_time_package_matches_eager_fp32_on_cuda(tmp_path, monkeypatch, precision, half_weights,
                                                          channels_last, weights, tolerance):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "segtrt"))
    net = _unet("plain").cuda()
    x = torch.randn(2, 1, 32, 32, 32, device="cuda")
    with torch.inference_mode():
        expected = net(x).float().cpu().numpy()
    with TorchRunner(net, "cuda", precision, compile_mode="default", batch_size=2, ahead_of_time=True,
                     half_weights=half_weights, channels_last=channels_last) as runner:
        out = runner.infer(x)
        described = runner.describe()
    assert described["path"] == "aot:default" and described["compiled"]["start"] == "cold"
    assert described["layout"] == ("ncdhw" if channels_last is False else "channels_last_3d")
    assert described.get("weights") == weights
    assert out.is_contiguous() and out.dtype == (torch.float16 if precision == "fp16" else torch.float32)
    np.testing.assert_allclose(out.float().cpu().numpy(), expected, rtol=0, atol=tolerance * np.abs(expected).max())
