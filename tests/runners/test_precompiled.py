"""precompiled: what torch.compile made, saved in segtrt's cache and loaded by later runners."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from segtrt.errors import BackendUnavailableError
from segtrt.runners import precompiled
from segtrt.runners.torch_runner import TorchRunner
from tiny_nets import batch_and_eager, conv_net as _net


def test_this_torch_can_save_compiled_modules():
    # the CI's torch must exercise the feature, not skip it
    assert precompiled.unavailable_reason() is None


def test_precompile_is_auto_only_for_unfrozen_torch_compile_on_cuda():
    assert TorchRunner(_net(), "cpu").precompile is False
    assert TorchRunner(_net(), "cpu", compile_mode="default", batch_size=2).precompile is False
    assert TorchRunner(_net(), "cpu", compile_mode="default", batch_size=2, precompile=True).precompile
    assert TorchRunner(_net(), "cpu", compile_mode="default", batch_size=2).describe()["precompile"] is False
    with pytest.raises(BackendUnavailableError, match="--precompile on applies to"):
        TorchRunner(_net(), "cpu", precompile=True)
    with pytest.raises(BackendUnavailableError, match="--precompile on applies to"):
        TorchRunner(_net(), "cpu", compile_mode="default", batch_size=2, freeze=True, precompile=True)
    with pytest.raises(BackendUnavailableError, match="--precompile on applies to"):
        TorchRunner(_net(), "cpu", compile_mode="default", ahead_of_time=True, precompile=True)


def test_forward_dispatches_on_shape_dtype_and_strides(tmp_path):
    made = []

    def load(example):
        made.append(precompiled.input_signature(example))
        scale = float(len(made))
        return precompiled.Loaded(lambda x: x * scale, made[-1], tmp_path / "x.bin", "compiled", 0.0)

    forward = precompiled.PrecompiledForward(load)
    x = torch.ones(2, 1, 4, 4, 4)
    assert torch.equal(forward(x), x) and torch.equal(forward(x.clone()), x)
    assert len(made) == 1
    wide = torch.ones(2, 3, 4, 4, 4)
    assert torch.equal(forward(wide.to(memory_format=torch.channels_last_3d)), 2 * wide)  # other strides
    assert torch.equal(forward(wide), 3 * wide)
    assert torch.equal(forward(x.double()), 4 * x.double())
    assert [m["stride"][1] for m in made[1:3]] == [1, 64] and made[3]["dtype"] == "float64"
    assert torch.equal(forward(x), x)  # the first one is still there
    assert len(made) == 4


@pytest.mark.slow
def test_precompiled_network_is_saved_then_loaded_rebuilt_when_damaged(tmp_path, compile_caches, caplog,
                                                                       monkeypatch):
    # inductor's CPU code generation (a C++ compile, ~20-40 s on two cores per input shape)
    net = _net()
    x, expected = batch_and_eager(net)
    folder = tmp_path / "segtrt" / "compiled" / "precompiled"

    def run(batches):
        with TorchRunner(net, "cpu", compile_mode="default", batch_size=2, precompile=True) as runner, \
                torch.inference_mode():
            outs = [runner.infer(b).clone().numpy() for b in batches]
            return outs, runner.describe()["compiled"]

    (first,), compiled = run([x])
    assert compiled["start"] == "cold" and compiled["precompiled"] == "compiled", compiled
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert len(list(folder.glob("*.bin"))) == 1 and len(list(folder.glob("*.json"))) == 1
    torch._dynamo.reset()

    # a later runner (as a later process) loads it: no tracing, the same kernels, the same answer; and
    # inductor, when it asks how many compile workers to use while loading, hears 1 (no worker pool started)
    other = torch.randn(2, 1, 8, 8, 8)
    with monkeypatch.context() as patch:
        threads = _spy_on_compile_threads(patch)
        (again, second), compiled = run([x, other])
    assert compiled["start"] == "warm" and compiled["precompiled"] == "loaded", compiled
    assert threads and set(threads) == {1}, threads
    np.testing.assert_array_equal(again, first)
    with torch.no_grad():
        np.testing.assert_allclose(second, net(other).numpy(), rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    torch._dynamo.reset()

    # a damaged entry is compiled again, and the report says why
    (payload,) = folder.glob("*.bin")
    payload.write_bytes(payload.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="segtrt.runners.precompiled"):
        (rebuilt,), compiled = run([x])
    assert compiled["precompiled"] == "compiled" and "sha256" in compiled["precompiled_note"], compiled
    assert any("could not be used" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(rebuilt, first)
    torch._dynamo.reset()
    assert not [p for p in folder.iterdir() if p.suffix not in (".bin", ".json", ".lock")], "temporaries left"


def _spy_on_compile_threads(monkeypatch) -> list[int]:
    """The compile-worker counts inductor's ``get_compile_threads`` returns from now on."""
    import torch._inductor.async_compile as async_compile

    seen, real = [], async_compile.get_compile_threads

    def spy() -> int:
        seen.append(real())
        return seen[-1]

    monkeypatch.setattr(async_compile, "get_compile_threads", spy)
    return seen


@pytest.mark.slow
def test_a_failing_precompile_falls_back_to_torch_compile_and_says_so(compile_caches, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("this torch refuses to save")

    monkeypatch.setattr(precompiled, "load_or_compile", refuse)
    net = _net()
    x, expected = batch_and_eager(net)
    with caplog.at_level(logging.WARNING, logger="segtrt.runners.torch_runner"), \
            TorchRunner(net, "cpu", compile_mode="default", batch_size=2, precompile=True) as runner, \
            torch.inference_mode():
        out = runner.infer(x).numpy()
        compiled = runner.describe()["compiled"]
    torch._dynamo.reset()
    assert compiled["precompiled"].startswith("failed, torch.compile used instead: RuntimeError: this torch refuses")
    assert compiled["start"] == "cold"
    assert any("using torch.compile" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow
def test_inference_and_ordinary_tensors_get_their_own_entries(compile_caches):
    # a module compiled in this process guards on the input's dispatch keys: an ordinary tensor first, then
    # an inference tensor (the predictor's batches) failed with "dispatch key set mismatch" (H200, 2026-12-03)
    net = _net()
    x, expected = batch_and_eager(net)
    with TorchRunner(net, "cpu", compile_mode="default", batch_size=2, precompile=True) as runner:
        ordinary = runner.infer(x.clone()).clone().numpy()
        with torch.inference_mode():
            inference = runner.infer(x.clone()).clone().numpy()
    for out in (ordinary, inference):
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    metadata = [json.loads(p.read_text()) for p in (compile_caches / "compiled" / "precompiled").glob("*.json")]
    assert sorted(m["fields"]["forward_input"]["inference"] for m in metadata) == [False, True]
    torch._dynamo.reset()
