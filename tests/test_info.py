"""``segtrt info``: the report agrees with what torch, TensorRT-RTX and ONNX Runtime say themselves."""

from __future__ import annotations

import argparse
import importlib
import json
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from segtrt import machine_info
from segtrt.commands import info as info_command
from segtrt.engine.flavors import RTX_RUNTIME_CCS, Flavor, runtime_support


def run_info(argv: list[str]) -> int:
    """Run the info command in-process through its own parser registration."""
    parser = argparse.ArgumentParser(prog="segtrt")
    info_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["info", *argv])
    return args.func(args)


def tiny_onnx(path) -> None:
    """Conv3d (1 -> 2 channels) + InstanceNormalization + LeakyRelu on a (1, 1, 8, 8, 8) input."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3, 3)).astype("float32"), "w"),
        numpy_helper.from_array(rng.standard_normal(2).astype("float32"), "scale"),
        numpy_helper.from_array(rng.standard_normal(2).astype("float32"), "bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1] * 6, name="conv"),
        helper.make_node("InstanceNormalization", ["conv", "scale", "bias"], ["norm"], name="norm"),
        helper.make_node("LeakyRelu", ["norm"], ["logits"], alpha=0.01, name="nonlin"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 8, 8, 8])],
        initializer=weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_report_matches_the_libraries():
    report = machine_info.collect_info()
    assert report["torch"] == torch.__version__ and report["torch_cuda"] == torch.version.cuda
    assert report["cuda_available"] == torch.cuda.is_available()
    assert len(report["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    flavors = {entry["name"]: entry for entry in report["tensorrt"]}
    assert set(flavors) == {"tensorrt", "tensorrt-rtx"}
    for name, module_name in (("tensorrt", "tensorrt"), ("tensorrt-rtx", "tensorrt_rtx")):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            assert not flavors[name]["installed"] and module_name in flavors[name]["error"]
        else:
            assert flavors[name]["installed"] and flavors[name]["version"] == module.__version__
    import onnxruntime as ort
    assert report["onnxruntime"] == {
        "installed": True, "version": ort.__version__, "providers": ort.get_available_providers()
    }


def test_rtx_runtime_support_table():
    rtx = Flavor("tensorrt-rtx", types.ModuleType("fake"))
    assert rtx.runtime_supports((9, 0)) is False  # Hopper: refused by TensorRT-RTX (FACTS.md)
    assert all(rtx.runtime_supports(cc) for cc in RTX_RUNTIME_CCS)
    assert Flavor("tensorrt", types.ModuleType("fake")).runtime_supports((9, 0)) is None  # not encoded


def test_backend_auto_hears_why_rtx_cannot_run_on_hopper(monkeypatch):
    import tensorrt_rtx  # noqa: F401  (a test dependency: missing = failure)
    try:
        importlib.import_module("tensorrt")
    except ImportError:
        pass
    else:
        pytest.skip("full TensorRT is installed: 'auto' picks it, not TensorRT-RTX")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")
    ok, why = runtime_support(torch.device("cuda", 0))
    assert not ok
    assert "does not run on NVIDIA H200 (compute capability 9.0)" in why and "8.6" in why


def test_json_output_is_the_report(capsys):
    assert run_info(["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(machine_info.collect_info()))


def test_text_output_names_every_component(capsys):
    assert run_info([]) == 0
    out = capsys.readouterr().out
    for word in ("torch", torch.__version__, "tensorrt-rtx", "onnxruntime"):
        assert word in out


def test_engine_report(tmp_path, capsys):
    import tensorrt_rtx as trt
    from segtrt.engine.build import BuildOptions
    from segtrt.engine.cache import get_or_build

    tiny_onnx(tmp_path / "tiny.onnx")
    options = BuildOptions(flavor="tensorrt-rtx")
    cached = get_or_build(tmp_path / "tiny.onnx", options, engine_path=tmp_path / "t.engine")
    report = machine_info.engine_report(cached.plan_path)
    assert report["metadata"]["fields"]["trt_version"] == trt.__version__
    assert report["bytes"] == cached.plan_path.stat().st_size
    if report["loadable"]:
        assert report["io"] == report["metadata"]["io"]
    else:  # this CPU, or a GPU TensorRT-RTX does not support: TensorRT's reason is quoted
        assert report["reason"].startswith(f"TensorRT-RTX {trt.__version__} cannot load this engine")
    assert run_info(["--engine", str(cached.plan_path)]) == 0
    assert str(cached.plan_path) in capsys.readouterr().out
