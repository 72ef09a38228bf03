"""compiled_cache: content keys, and AOTInductor packages that a later call loads instead of compiling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segtrt.errors import CompiledCacheError
from segtrt.runners import compiled_cache, cxx_toolchain
from segtrt.runners.torch_runner import TorchRunner
from tiny_nets import conv_net


def _net(seed: int = 0) -> torch.nn.Module:
    return conv_net(in_channels=2, seed=seed)


def test_network_digest_follows_weights_not_layout():
    a, b = _net(), _net()
    assert compiled_cache.network_sha256(a) == compiled_cache.network_sha256(b)
    b.to(memory_format=torch.channels_last_3d)
    assert compiled_cache.network_sha256(a) == compiled_cache.network_sha256(b)
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0, 0] += 1e-3
    assert compiled_cache.network_sha256(a) != compiled_cache.network_sha256(b)
    assert compiled_cache.network_sha256(a) != compiled_cache.network_sha256(_net(seed=1))


def test_half_digest_is_the_digest_of_the_fp16_copy():
    import copy

    net = _net()
    assert compiled_cache.network_sha256(net, as_half=True) == compiled_cache.network_sha256(copy.deepcopy(net).half())
    assert compiled_cache.network_sha256(net, as_half=True) != compiled_cache.network_sha256(net)
    assert next(net.parameters()).dtype == torch.float32  # nothing cast in place


def test_find_answers_only_for_a_complete_entry(tmp_path):
    cpu, shape = torch.device("cpu"), (1, 2, 8, 8, 8)
    assert compiled_cache.find(_net(), shape, "fp32", True, device=cpu, root=tmp_path)[0] is None
    fields, key, path = compiled_cache._entry(compiled_cache.network_sha256(_net()), shape, "fp32", True, "default",
                                              cpu, tmp_path, False)
    path.write_bytes(b"package")  # published package without metadata: still being written or damaged
    assert compiled_cache.find(_net(), shape, "fp32", True, device=cpu, root=tmp_path)[0] is None
    (tmp_path / f"{key}.pt2.json").write_text(json.dumps({"fields": fields}))
    found, digest = compiled_cache.find(_net(), shape, "fp32", True, device=cpu, root=tmp_path)
    assert found == path and digest == compiled_cache.network_sha256(_net())  # the digest get_or_compile can reuse
    # another shape, layout, network or the fp16 copy: another entry
    assert compiled_cache.find(_net(), (2, 2, 8, 8, 8), "fp32", True, device=cpu, root=tmp_path)[0] is None
    assert compiled_cache.find(_net(), shape, "fp32", False, device=cpu, root=tmp_path)[0] is None
    assert compiled_cache.find(_net(seed=1), shape, "fp32", True, device=cpu, root=tmp_path)[0] is None
    assert compiled_cache.find(_net(), shape, "fp32", True, device=cpu, root=tmp_path, half_weights=True)[0] is None


def test_key_fields_cover_shape_precision_layout_mode_and_target():
    cpu = torch.device("cpu")
    base = compiled_cache.key_fields("abc", (4, 2, 8, 8, 8), "fp32", True, "default", cpu)
    assert base["layout"] == "channels_last_3d" and base["torch_version"] == torch.__version__
    assert base["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    variants = [
        compiled_cache.key_fields("abd", (4, 2, 8, 8, 8), "fp32", True, "default", cpu),
        compiled_cache.key_fields("abc", (2, 2, 8, 8, 8), "fp32", True, "default", cpu),
        compiled_cache.key_fields("abc", (4, 2, 8, 8, 8), "fp16", True, "default", cpu),
        compiled_cache.key_fields("abc", (4, 2, 8, 8, 8), "fp32", False, "default", cpu),
        compiled_cache.key_fields("abc", (4, 2, 8, 8, 8), "fp32", True, "max-autotune-no-cudagraphs", cpu),
    ]
    keys = {compiled_cache.cache_key(f) for f in [base, *variants]}
    assert len(keys) == 6


def test_a_half_weight_package_has_its_own_key(tmp_path, monkeypatch):
    # the fp16 weight copy takes float16 batches: another package than the autocast one, under another key
    calls = []

    def fake_compile(network, shape, precision, channels_last, mode, device, path, fields, half_weights=False):
        calls.append((fields, half_weights))
        raise CompiledCacheError("stop after keying")

    monkeypatch.setattr(compiled_cache, "_compile", fake_compile)
    for half in (False, True):
        with pytest.raises(CompiledCacheError, match="stop after keying"):
            compiled_cache.get_or_compile(_net(), (1, 2, 8, 8, 8), "fp16", True, device=torch.device("cpu"),
                                          root=tmp_path, half_weights=half)
    (plain, plain_half), (copy, copy_half) = calls
    assert (plain_half, copy_half) == (False, True)
    assert plain["input_dtype"] == "float32" and "weights" not in plain
    assert copy["input_dtype"] == "float16" and copy["weights"] == "fp16 copy"
    assert compiled_cache.cache_key(plain) != compiled_cache.cache_key(copy)


def test_to_layout_copies_only_when_needed():
    x = torch.randn(2, 3, 4, 5, 6)
    last = compiled_cache.to_layout(x, True)
    assert last.is_contiguous(memory_format=torch.channels_last_3d) and not last.is_contiguous()
    assert compiled_cache.to_layout(last, True) is last
    assert compiled_cache.to_layout(x, False) is x
    single = torch.randn(2, 1, 4, 5, 6)  # one channel: NCDHW is already channels-last in memory...
    viewed = compiled_cache.to_layout(single, True)
    assert viewed.data_ptr() == single.data_ptr() and torch.equal(viewed, single)
    # ...but only the exact strides make torch choose channels-last kernels for what follows
    assert viewed.stride() == (120, 1, 30, 6, 1)
    weight = torch.randn(3, 1, 3, 3, 3).to(memory_format=torch.channels_last_3d)
    assert torch.nn.functional.conv3d(viewed, weight).stride()[1] == 1, "channels-last output expected"
    assert torch.nn.functional.conv3d(single, torch.randn(3, 1, 3, 3, 3)).stride()[1] != 1


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(CompiledCacheError, match="compile mode must be one of"):
        compiled_cache.get_or_compile(_net(), (1, 2, 8, 8, 8), "fp32", False, "fastest",
                                      device=torch.device("cpu"), root=tmp_path)


@pytest.mark.slow
def test_ahead_of_time_package_is_compiled_once_then_loaded(tmp_path, monkeypatch):
    # AOTInductor on the CPU (C++ code generation and a compiler run, ~30-60 s on two cores)
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    net = _net()
    x = torch.randn(2, 2, 8, 8, 8)
    with torch.no_grad():
        expected = net(x).numpy()
    cpu = torch.device("cpu")
    assert compiled_cache.find(net, x.shape, "fp32", True, device=cpu)[0] is None
    with torch.inference_mode(), TorchRunner(net, "cpu", compile_mode="default", batch_size=2, channels_last=True,
                                             ahead_of_time=True) as runner:
        cold = runner.infer(x).numpy()
        info = runner.describe()
    assert info["path"] == "aot:default" and info["compiled"]["start"] == "cold"
    package = tmp_path / "cache" / "compiled" / f"{compiled_cache.cache_key(compiled_cache.read_metadata(info['compiled']['package'])['fields'])}.pt2"
    assert package.is_file() and str(package) == info["compiled"]["package"]
    found, digest = compiled_cache.find(net, x.shape, "fp32", True, device=cpu)
    assert found == package  # what --compile auto looks for
    metadata = json.loads((package.parent / (package.name + ".json")).read_text())
    assert metadata["fields"]["layout"] == "channels_last_3d" and metadata["fields"]["input_shape"] == [2, 2, 8, 8, 8]
    assert metadata["cxx"] == cxx_toolchain.choose().cxx == info["compiled"]["cxx"]  # who built it is on record
    # fp32 inductor vs eager: another summation order, ~1e-7 of the logits
    np.testing.assert_allclose(cold, expected, rtol=0, atol=1e-5 * np.abs(expected).max())

    with TorchRunner(net, "cpu", compile_mode="default", batch_size=2, channels_last=True,
                     ahead_of_time=True) as runner:
        warm = runner.infer(x).numpy()
        assert runner.describe()["compiled"]["start"] == "warm"
    np.testing.assert_array_equal(warm, cold)
    # given the digest find() computed (as --compile auto passes it), loading does not hash the weights again
    with monkeypatch.context() as patched:
        patched.setattr(compiled_cache, "network_sha256", lambda *a, **k: pytest.fail("weights hashed again"))
        with TorchRunner(net, "cpu", compile_mode="default", batch_size=2, channels_last=True, ahead_of_time=True,
                         network_digest=digest) as runner:
            np.testing.assert_array_equal(runner.infer(x).numpy(), cold)
            assert runner.describe()["compiled"]["start"] == "warm"

    # a warm start in a fresh process loads the package without importing torch's compiler
    child = subprocess.run([sys.executable, "-c", _WARM_CHILD, str(Path(__file__).parent)], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == {"start": "warm", "torch._dynamo": False,
                                                                 "torch._inductor.compile_fx": False}

    with open(package, "r+b") as handle:  # damage the package: a later load must refuse it, not run it
        handle.seek(100)
        handle.write(b"\0" * 16)
    with pytest.raises(CompiledCacheError, match="does not match the checksum"):
        with TorchRunner(net, "cpu", compile_mode="default", batch_size=2, channels_last=True,
                         ahead_of_time=True) as runner:
            runner.infer(x)


_WARM_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from segtrt.runners.torch_runner import TorchRunner
from tiny_nets import conv_net
net = conv_net(in_channels=2, seed=0)
with torch.inference_mode(), TorchRunner(net, "cpu", compile_mode="default", batch_size=2, channels_last=True,
                                         ahead_of_time=True) as runner:
    runner.infer(torch.randn(2, 2, 8, 8, 8))
    start = runner.describe()["compiled"]["start"]
print(json.dumps({"start": start, **{name: name in sys.modules for name in ("torch._dynamo", "torch._inductor.compile_fx")}}))
"""


def test_probe_turns_a_package_that_cannot_load_into_an_error(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a package")
    with pytest.raises(CompiledCacheError, match="failed when a test process loaded and ran it on cpu"):
        compiled_cache.probe(bad, (1, 2, 8, 8, 8), True, torch.device("cpu"))


def test_a_package_that_fails_its_probe_is_not_published(tmp_path, monkeypatch):
    def fake_compile(program, package_path, inductor_configs):
        Path(package_path).write_bytes(b"kernels")
        return package_path

    def failing_probe(path, shape, channels_last, device, dtype):
        assert Path(path).is_file() and path.name.endswith(".tmp.pt2")  # probed before it is published
        raise CompiledCacheError("crashed")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fake_compile)
    monkeypatch.setattr(compiled_cache, "probe", failing_probe)
    with pytest.raises(CompiledCacheError, match="crashed"):
        compiled_cache.get_or_compile(_net(), (1, 2, 8, 8, 8), "fp32", True, device=torch.device("cpu"), root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []
