"""segtrt.export: the ONNX contract, metadata, fp16 graph types and the built-in numerical check.

Networks are small dynamic-network-architectures U-Nets (InstanceNorm3d + LeakyReLU, 4 stages,
8-64 features, patch 32x48x48) and a 2-conv toy network for the fast tests. Each export runs the
torch.export-based exporter (4-25 s for a U-Net on two shared cores), so the U-Net matrix is
marked slow and shares its exports through a module-scoped cache.

Reference: the torch float32 network. Measured ONNX Runtime CPU vs torch CPU on these nets:
fp32 max |diff| <= 4e-6 (|logits| <= 3.4); fp16 max |diff| <= 5.3e-3 = 5.8e-4 max|ref|, so
segtrt.verify.TOLERANCES (fp32 1e-4 max|ref|, fp16 2.5e-2 max|ref|, set from GPU fp16
measurements) hold with >= 25x headroom here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import onnx
import onnxruntime  # noqa: F401  (a test dependency: missing = failure)
import onnxscript  # noqa: F401  (a test dependency: missing = failure)
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet  # noqa: E402

from segtrt.errors import ExportError  # noqa: E402
from segtrt.export import (  # noqa: E402
    export_onnx,
    fold_path,
    network_total_stride,
    read_metadata,
)
from segtrt.runners.onnxruntime_runner import OnnxRuntimeRunner  # noqa: E402
from segtrt.verify import TOLERANCES, random_patches  # noqa: E402

PATCH = (32, 48, 48)
NORM = dict(conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def plain_unet() -> nn.Module:
    torch.manual_seed(0)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    return PlainConvUNet(1, 4, [8, 16, 32, 64], nn.Conv3d, 3, strides, 2, 3, 2, **NORM).eval()


def resenc_unet() -> nn.Module:
    torch.manual_seed(1)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    return ResidualEncoderUNet(1, 4, [8, 16, 32, 64], nn.Conv3d, 3, strides, [1, 2, 2, 2], 3, 1, **NORM).eval()


NETWORKS = {"plain": plain_unet, "resenc": resenc_unet}


class Toy(nn.Module):
    """Conv -> InstanceNorm -> LeakyReLU -> 1x1 Conv. ``lie=True`` changes the output only while
    being exported, so the exported graph disagrees with the eager network."""

    def __init__(self, lie: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.norm = nn.InstanceNorm3d(4, affine=True)
        self.act = nn.LeakyReLU(0.01)
        self.head = nn.Conv3d(4, 3, 1)
        self.lie = lie

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.act(self.norm(self.conv(x))))
        if self.lie and torch.compiler.is_exporting():
            y = y * 1.01
        return y


def assert_matches_torch(path, network, batch: torch.Tensor, precision: str) -> None:
    """ONNX Runtime output vs the torch fp32 network, with segtrt.verify's tolerance for precision."""
    with torch.inference_mode():
        expected = network(batch).numpy()
    with OnnxRuntimeRunner(path, "cpu") as runner:
        got = runner(batch).numpy()
    tol = TOLERANCES[precision]
    np.testing.assert_allclose(got, expected, rtol=tol.rtol, atol=tol.atol_for(float(np.abs(expected).max())))


# fast: the toy network ----------------------------------------------------------------------------
def test_static_fp32_export_contract_and_metadata(tmp_path):
    net = Toy()
    meta = {"model_identity": "abc123", "fold": 0, "labels": {"background": 0, "a": 1, "b": 2}}
    result = export_onnx(net, tmp_path / "toy.onnx", patch_size=(8, 8, 8), in_channels=1, batch=2, metadata=meta)
    assert result.path.is_file() and not (tmp_path / "toy.onnx.partial").exists()
    assert result.input_shape == (2, 1, 8, 8, 8) and result.output_shape == (2, 3, 8, 8, 8)
    assert result.precision == "fp32" and result.opset >= 17 and result.checks and all(result.checks)
    assert result.op_summary["InstanceNormalization"] == {"float32": 1}  # a native op, not decomposed
    assert "Identity" not in result.op_summary
    model = onnx.load(str(result.path))
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    stored = read_metadata(result.path)
    assert stored["model_identity"] == "abc123" and stored["fold"] == 0 and stored["labels"] == meta["labels"]
    assert stored["patch_size"] == [8, 8, 8] and stored["in_channels"] == 1 and stored["num_classes"] == 3
    assert stored["precision"] == "fp32" and stored["export_options"]["batch"] == 2
    assert stored["input_name"] == "image" and stored["output_name"] == "logits"
    assert_matches_torch(result.path, net, random_patches(1, 1, (8, 8, 8), batch=2)[0], "fp32")


def test_fp16_graph_is_half_inside_with_float32_edges_and_norms(tmp_path):
    net = Toy()
    result = export_onnx(net, tmp_path / "toy16.onnx", patch_size=(8, 8, 8), in_channels=1, dynamic_batch=True,
                         dynamic_spatial=True, precision="fp16", total_stride=(1, 1, 1))
    assert result.input_shape == ("batch", 1, "z", "y", "x") and result.output_shape == ("batch", 3, "z", "y", "x")
    ops = result.op_summary
    assert ops["Conv"] == {"float16": 2} and ops["LeakyRelu"] == {"float16": 1}
    assert ops["InstanceNormalization"] == {"float32": 1}
    model = onnx.load(str(result.path))
    float32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == float32
    assert model.graph.output[0].type.tensor_type.elem_type == float32
    assert all(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer
               if "norm" not in init.name)
    for batch, shape in ((1, (8, 8, 8)), (3, (5, 9, 6))):
        assert_matches_torch(result.path, net, random_patches(2, 1, shape, batch=batch)[1], "fp16")


def test_fp16_graph_with_fp16_norms_is_half_throughout(tmp_path):
    net = Toy()
    result = export_onnx(net, tmp_path / "toy16.onnx", patch_size=(8, 8, 8), in_channels=1, precision="fp16",
                         norm_precision="fp16")
    assert result.op_summary["InstanceNormalization"] == {"float16": 1} and result.op_summary["Cast"] == {
        "float16": 1, "float32": 1}  # only the input and output casts
    assert read_metadata(result.path)["export_options"]["norm_precision"] == "fp16"
    assert_matches_torch(result.path, net, random_patches(2, 1, (8, 8, 8))[1], "fp16")


def test_failed_numerical_check_raises_with_numbers_and_leaves_no_file(tmp_path):
    path = tmp_path / "liar.onnx"
    with pytest.raises(ExportError, match=r"numerical check failed: .*max\|diff\|=.*limits rtol="):
        export_onnx(Toy(lie=True), path, patch_size=(8, 8, 8), in_channels=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "bf16"}, "precision must be fp32 or fp16"),
        ({"precision": "fp16", "norm_precision": "int8"}, "norm_precision must be"),
        ({"batch": 0}, "batch must be a positive integer"),
        ({"opset": 13}, "opset 13 is too old"),
        ({"patch_size": (8, 8)}, "three positive voxel counts"),
        ({"dynamic_spatial": True}, "need the network's total stride"),
        ({"dynamic_spatial": True, "total_stride": (4, 4, 4), "patch_size": (8, 8, 6)}, "not a multiple"),
        ({"metadata": {"precision": "fp64"}}, "written by segtrt itself"),
        ({"metadata": {"when": object()}}, "JSON-serialisable"),
    ],
)
def test_invalid_options_are_refused(tmp_path, kwargs, message):
    options = {"patch_size": (8, 8, 8), "in_channels": 1, **kwargs}
    with pytest.raises(ExportError, match=message):
        export_onnx(Toy(), tmp_path / "x.onnx", **options)
    assert not (tmp_path / "x.onnx").exists()


def test_network_total_stride_is_the_product_of_stage_strides():
    assert network_total_stride(plain_unet()) == (8, 8, 8)
    assert network_total_stride(resenc_unet()) == (4, 8, 8)
    assert network_total_stride(Toy()) is None


def test_fold_path(tmp_path):
    assert fold_path(tmp_path / "m.onnx", 0, several=False) == tmp_path / "m.onnx"
    assert fold_path(tmp_path / "m.onnx", 3, several=True) == tmp_path / "m_fold3.onnx"
    assert fold_path(tmp_path / "m", "all", several=True) == tmp_path / "m_foldall.onnx"


# U-Nets ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unet_exports(tmp_path_factory):
    """Exports on demand, once per (network, batch mode, precision) in this module."""
    cache: dict[tuple[str, str, str], tuple[nn.Module, object]] = {}
    folder = tmp_path_factory.mktemp("unets")

    def get(arch: str, mode: str, precision: str):
        key = (arch, mode, precision)
        if key not in cache:
            net = NETWORKS[arch]()
            batch = {"dynamic_batch": True} if mode == "dynamic" else {"batch": 2}
            result = export_onnx(net, folder / f"{arch}_{mode}_{precision}.onnx", patch_size=PATCH,
                                 in_channels=1, precision=precision, check_batches=1, **batch)
            cache[key] = (net, result)
        return cache[key]

    return get


def test_plain_unet_fp16_dynamic_batch_runs_at_batch_1_2_3(unet_exports):
    net, result = unet_exports("plain", "dynamic", "fp16")
    assert result.input_shape == ("batch", 1, *PATCH) and all(result.checks)
    assert result.op_summary["Conv"] == {"float16": 15}
    assert result.op_summary["InstanceNormalization"] == {"float32": 14}
    with OnnxRuntimeRunner(result.path, "cpu") as runner:
        assert runner.fixed_batch_size is None
        for batch in (1, 2, 3):
            patches = random_patches(1, 1, PATCH, batch=batch, seed=batch)[0]
            with torch.inference_mode():
                expected = net(patches).numpy()
            got = runner(patches).numpy()
            tol = TOLERANCES["fp16"]
            np.testing.assert_allclose(got, expected, rtol=tol.rtol, atol=tol.atol_for(float(np.abs(expected).max())))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("arch", ["plain", "resenc"])
def test_unet_exports_pass_their_checks_and_match_torch(unet_exports, arch, mode, precision):
    net, result = unet_exports(arch, mode, precision)
    assert result.checks and all(c.passed for c in result.checks)
    assert result.input_shape[0] == ("batch" if mode == "dynamic" else 2)
    norm_types = result.op_summary["InstanceNormalization"]
    conv_types = result.op_summary["Conv"]
    assert set(norm_types) == {"float32"}  # native InstanceNormalization, fp32 also in fp16 graphs
    assert set(conv_types) == {"float16" if precision == "fp16" else "float32"}
    for batch in ((1, 2, 3) if mode == "dynamic" else (2,)):
        assert_matches_torch(result.path, net, random_patches(2, 1, PATCH, batch=batch, seed=batch)[1], precision)
    if mode == "static":
        with OnnxRuntimeRunner(result.path, "cpu") as runner:
            assert runner.fixed_batch_size == 2


@pytest.mark.slow
def test_dynamic_spatial_export_runs_at_stride_multiples(tmp_path):
    net = resenc_unet()  # total stride (4, 8, 8)
    result = export_onnx(net, tmp_path / "spatial.onnx", patch_size=PATCH, in_channels=1, dynamic_batch=True,
                         dynamic_spatial=True, check_batches=1)
    assert result.input_shape == ("batch", 1, "4*z", "8*y", "8*x")
    assert read_metadata(result.path)["total_stride"] == [4, 8, 8]
    for shape in ((16, 32, 40), (36, 56, 48)):
        assert_matches_torch(result.path, net, random_patches(1, 1, shape, batch=1)[0], "fp32")


# the model-folder path and the CLI (need a trained nnU-Net model: built once per session) ---------
@pytest.fixture
def trained_folder(nnunet_model_folder):
    from nnunet_factory import FactorySpec

    return nnunet_model_folder(FactorySpec())


@pytest.mark.slow
def test_export_cli_writes_a_checked_file_per_fold(trained_folder, tmp_path, capsys):
    from segtrt.cli import main
    from segtrt.nnunet import load_model

    out = tmp_path / "model.onnx"
    rc = main(["export", "-m", str(trained_folder), "-o", str(out), "--dynamic-batch", "--precision", "fp16",
               "--json", str(tmp_path / "export.json")])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    model = load_model(trained_folder)
    meta = read_metadata(out)
    assert meta["model_identity"] == model.identity and meta["fold"] == model.folder.folds[0]
    assert meta["configuration"] == model.folder.configuration_name and meta["labels"] == model.folder.labels
    assert meta["patch_size"] == list(model.folder.patch_size) and meta["precision"] == "fp16"
    assert meta["mirror_axes"] == list(model.mirror_axes)
    report = json.loads((tmp_path / "export.json").read_text())
    assert len(report) == 1 and report[0]["checks"] and all(c["passed"] for c in report[0]["checks"])
    patch = tuple(model.folder.patch_size)
    assert_matches_torch(out, model.networks[0], random_patches(2, 1, patch, batch=3)[1], "fp16")


@pytest.mark.slow
def test_export_cli_end_to_end_as_a_subprocess(trained_folder, tmp_path):
    out = tmp_path / "model.onnx"
    command = [sys.executable, "-m", "segtrt.cli", "export", "-m", str(trained_folder), "-o", str(out), "--no-check"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and read_metadata(out)["precision"] == "fp32"
    missing = subprocess.run([*command[:-1], "-f", "7"], capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and missing.stderr.startswith("segtrt: error:")


def test_a_channels_last_runner_leaves_the_exported_graph_unchanged(tmp_path):
    # the torch runner converts the shared network to channels_last_3d while active and back afterwards
    from segtrt.runners.torch_runner import TorchRunner

    net = Toy()
    before = export_onnx(net, tmp_path / "before.onnx", patch_size=(8, 8, 8), in_channels=1, batch=2)
    with TorchRunner(net, "cpu", channels_last=True) as runner:
        runner.infer(torch.randn(2, 1, 8, 8, 8))
    after = export_onnx(net, tmp_path / "after.onnx", patch_size=(8, 8, 8), in_channels=1, batch=2)
    graphs = [onnx.load(str(r.path)).graph.SerializeToString() for r in (before, after)]
    assert graphs[0] == graphs[1]
