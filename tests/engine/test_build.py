"""Building real TensorRT-RTX plans on the CPU from tiny nnU-Net-style ONNX exports.

TensorRT-RTX's builder parses ONNX and serializes plans without a GPU; its runtime cannot open them
without one. What is checked here, and how:

- parser: no errors for PlainConvUNet / ResidualEncoderUNet, fp32 and fp16, static and dynamic batch;
  a broken node is reported by index, name and operator.
- I/O names, dtypes, shapes and profile shapes: read back from the builder's parsed network and the
  profile given to it (``BuildResult.io``) and compared with the ONNX graph and the requested batches.
- precision actually built: convolution layers counted by dtype in the parsed, strongly typed network
  (fp16 graph -> all float16) against the Conv/ConvTranspose count of the ONNX graph.
- the plan: non-empty and at least as large as the ONNX weights it must contain.
- reading the plan itself (``inspect_plan``): on a machine whose runtime can load it the specs must
  equal the build's; elsewhere (this CPU) the refusal must quote TensorRT's reason.
"""

from __future__ import annotations

import argparse
import json
import logging

import onnx
import pytest
import torch
from torch import nn

import tensorrt_rtx as trt  # a test dependency (segtrt[rtx]): missing = failure
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet  # noqa: E402

from segtrt.engine.build import build_engine, resolve_batch_range  # noqa: E402
from segtrt.engine.flavors import load_flavor  # noqa: E402
from segtrt.engine.inspect import inspect_plan  # noqa: E402
from segtrt.errors import BackendUnavailableError, EngineError  # noqa: E402
from segtrt.export import export_onnx  # noqa: E402

PATCH = (16, 32, 32)  # (z, y, x) voxels
IN_CHANNELS, NUM_CLASSES = 1, 3
RTX = "tensorrt-rtx"


def tiny_network(kind: str) -> nn.Module:
    """3 stages, features 8..32, InstanceNorm3d + LeakyReLU, no deep supervision."""
    torch.manual_seed(0)
    common = dict(
        input_channels=IN_CHANNELS, n_stages=3, features_per_stage=(8, 16, 32), conv_op=nn.Conv3d,
        kernel_sizes=3, strides=(1, 2, 2), num_classes=NUM_CLASSES, n_conv_per_stage_decoder=1,
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    )
    if kind == "plain":
        return PlainConvUNet(n_conv_per_stage=2, **common).eval()
    return ResidualEncoderUNet(n_blocks_per_stage=1, **common).eval()


def export(kind: str, path, *, dynamic: bool, fp16: bool) -> None:
    """segtrt's exporter: input 'image' (N, 1, 16, 32, 32), output 'logits'; N dynamic or 1.

    fp16 is a half network with float32 I/O (and float32 instance norm, see segtrt.onnx_fp16). The
    exporter's ONNX Runtime check is skipped (check=False): its own tests cover it, and here it would
    double the fixture time.
    """
    precision = "fp16" if fp16 else "fp32"
    export_onnx(tiny_network(kind), path, patch_size=PATCH, in_channels=IN_CHANNELS, dynamic_batch=dynamic,
                precision=precision, check=False)


VARIANTS = {
    "plain-fp32-static": ("plain", False, False),
    "plain-fp32-dynamic": ("plain", True, False),
    "plain-fp16-dynamic": ("plain", True, True),
    "residual-fp32-dynamic": ("residual", True, False),
    "residual-fp16-dynamic": ("residual", True, True),
}


class OnnxFiles(dict):
    """Variant name -> ONNX path, exported on first use (~3 s each on two shared cores)."""

    def __init__(self, folder) -> None:
        super().__init__()
        self.folder = folder

    def __missing__(self, name: str):
        kind, dynamic, fp16 = VARIANTS[name]
        path = self[name] = self.folder / f"{name}.onnx"
        export(kind, path, dynamic=dynamic, fp16=fp16)
        return path


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> OnnxFiles:
    return OnnxFiles(tmp_path_factory.mktemp("onnx"))


def onnx_conv_count(path) -> int:
    return sum(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(path)).graph.node)


def onnx_weight_bytes(path) -> int:
    model = onnx.load(str(path))
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def io_by_name(result) -> dict:
    return {spec.name: spec for spec in result.io}


def test_static_graph_has_static_io_and_no_profile(onnx_files):
    result = build_engine(onnx_files["plain-fp32-static"], flavor=RTX)
    io = io_by_name(result)
    assert set(io) == {"image", "logits"}
    assert (io["image"].mode, io["image"].dtype, io["image"].shape) == ("input", "float32", (1, IN_CHANNELS, *PATCH))
    logits = (io["logits"].mode, io["logits"].dtype, io["logits"].shape)
    assert logits == ("output", "float32", (1, NUM_CLASSES, *PATCH))
    assert io["image"].profile is None and result.batch_range is None
    assert (result.flavor, result.version) == (RTX, trt.__version__)
    assert len(result.plan) >= onnx_weight_bytes(onnx_files["plain-fp32-static"]) > 0


@pytest.mark.parametrize(
    "variant",
    [
        "plain-fp32-dynamic",
        "plain-fp16-dynamic",
        "residual-fp32-dynamic",
        "residual-fp16-dynamic",
    ],
)
def test_dynamic_graph_gets_batch_profile_and_graph_precision(onnx_files, variant):
    result = build_engine(onnx_files[variant], min_batch=1, opt_batch=2, max_batch=3, flavor=RTX)
    io = io_by_name(result)
    assert io["image"].shape == (-1, IN_CHANNELS, *PATCH)
    assert io["image"].profile == tuple((b, IN_CHANNELS, *PATCH) for b in (1, 2, 3))
    assert io["logits"].shape == (-1, NUM_CLASSES, *PATCH) and io["logits"].profile is None
    assert io["image"].dtype == io["logits"].dtype == "float32"  # fp16 graphs keep fp32 I/O
    assert result.batch_range == (1, 2, 3)
    compute = "float16" if "fp16" in variant else "float32"
    assert result.compute_dtypes == {compute: onnx_conv_count(onnx_files[variant])}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ((None, None, None), (1, 4, 4)),
        ((None, None, 8), (1, 8, 8)),
        ((None, 2, None), (1, 2, 2)),
        ((2, None, None), (2, 4, 4)),
        ((8, None, None), (8, 8, 8)),
        ((1, 2, 6), (1, 2, 6)),
    ],
)
def test_batch_range_defaults(given, expected):
    assert resolve_batch_range(*given) == expected


@pytest.mark.parametrize("given", [(3, 2, None), (None, 5, 4), (0, None, None)])
def test_invalid_batch_range_is_refused(given):
    with pytest.raises(EngineError, match="1 <= min <= opt <= max"):
        resolve_batch_range(*given)


def test_default_profile_used_when_no_batches_given(onnx_files):
    result = build_engine(onnx_files["plain-fp32-dynamic"], flavor=RTX)
    assert io_by_name(result)["image"].profile == tuple((b, IN_CHANNELS, *PATCH) for b in (1, 4, 4))


def test_static_graph_refuses_other_batches(onnx_files):
    with pytest.raises(EngineError, match="static batch of 1"):
        build_engine(onnx_files["plain-fp32-static"], max_batch=4, flavor=RTX)
    assert build_engine(onnx_files["plain-fp32-static"], max_batch=1, flavor=RTX).batch_range is None


def test_broken_node_is_named(onnx_files, tmp_path):
    model = onnx.load(str(onnx_files["plain-fp32-static"]))
    index = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Conv")
    node = model.graph.node[index]
    node.op_type = "NotARealOp"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(EngineError) as info:
        build_engine(broken, flavor=RTX)
    message = str(info.value)
    assert f"node {index} '{node.name}' (op NotARealOp)" in message
    assert str(broken) in message and "\n" not in message


def test_dynamic_spatial_axis_is_refused(onnx_files, tmp_path):
    model = onnx.load(str(onnx_files["plain-fp32-dynamic"]))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "z"
    path = tmp_path / "dynamic_z.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match="only the batch axis may be dynamic"):
        build_engine(path, flavor=RTX)


def test_builder_options_are_validated(onnx_files):
    with pytest.raises(EngineError, match="--opt-level 7"):
        build_engine(onnx_files["plain-fp32-static"], opt_level=7, flavor=RTX)
    with pytest.raises(EngineError, match="--workspace 0"):
        build_engine(onnx_files["plain-fp32-static"], workspace_mb=0, flavor=RTX)
    result = build_engine(onnx_files["plain-fp32-static"], opt_level=0, workspace_mb=64, flavor=RTX)
    assert result.options.opt_level == 0 and result.options.workspace_mb == 64 and len(result.plan) > 0


def test_missing_onnx_is_a_user_error(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        build_engine(tmp_path / "absent.onnx", flavor=RTX)


def test_rtx_timing_cache_is_not_written_and_says_so(onnx_files, tmp_path, caplog):
    cache = tmp_path / "timing.cache"
    with caplog.at_level(logging.WARNING, logger="segtrt.engine.build"):
        result = build_engine(onnx_files["plain-fp32-static"], timing_cache=cache, flavor=RTX)
    assert not result.timing_cache_saved and not cache.exists()
    assert "ignores timing caches" in caplog.text


def test_full_tensorrt_timing_cache_is_saved_and_reused(onnx_files, tmp_path):
    try:
        load_flavor("tensorrt")
    except BackendUnavailableError as exc:
        pytest.skip(f"full TensorRT is not installed here: {exc}")
    if not torch.cuda.is_available():
        pytest.skip("full TensorRT's builder needs a CUDA GPU; none is visible")
    cache = tmp_path / "timing.cache"
    first = build_engine(onnx_files["plain-fp32-dynamic"], timing_cache=cache, flavor="tensorrt")
    size = cache.stat().st_size
    second = build_engine(onnx_files["plain-fp32-dynamic"], timing_cache=cache, flavor="tensorrt")
    assert first.timing_cache_saved and second.timing_cache_saved and size > 0
    assert cache.stat().st_size >= size


def test_plan_inspection_matches_build_or_quotes_tensorrt(onnx_files):
    result = build_engine(onnx_files["plain-fp16-dynamic"], min_batch=1, opt_batch=2, max_batch=3, flavor=RTX)
    flavor = load_flavor(RTX)
    runnable = torch.cuda.is_available() and flavor.runtime_supports(torch.cuda.get_device_capability())
    if runnable:
        assert inspect_plan(result.plan, flavor) == result.io
        return
    with pytest.raises(BackendUnavailableError) as info:
        inspect_plan(result.plan, flavor)
    message = str(info.value)
    reason = message.split("on this machine: ", 1)[1]
    assert message.startswith(f"{flavor.label} cannot load this engine")
    assert reason.strip() and not reason.startswith("no reason given")  # TensorRT's own words are quoted



def run_build_command(argv: list[str]) -> int:
    """``segtrt build`` in-process, through the command's own parser registration."""
    from segtrt.commands import build as build_command

    parser = argparse.ArgumentParser(prog="segtrt")
    build_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["build", *argv])
    return args.func(args)


def test_build_command_writes_engine_and_metadata(onnx_files, tmp_path, capsys):
    engine = tmp_path / "out" / "model.engine"
    argv = [str(onnx_files["plain-fp16-dynamic"]), "-o", str(engine), "--min-batch", "1", "--opt-batch", "2",
            "--max-batch", "3", "--opt-level", "2", "--workspace", "256", "--flavor", RTX]
    assert run_build_command(argv) == 0
    meta = json.loads(engine.with_name("model.engine.json").read_text())
    assert meta["plan_bytes"] == engine.stat().st_size
    assert meta["fields"]["batch_range"] == [1, 2, 3]
    assert (meta["fields"]["opt_level"], meta["fields"]["workspace_mb"]) == (2, 256)
    assert meta["compute_dtypes"] == {"float16": onnx_conv_count(onnx_files["plain-fp16-dynamic"])}
    out = capsys.readouterr().out
    assert f"wrote {engine}" in out and "profile min/opt/max [1, 1, 16, 32, 32]" in out
    assert run_build_command(argv) == 0  # an existing engine at -o is replaced


def test_build_command_reports_user_errors(onnx_files, tmp_path):
    with pytest.raises(EngineError, match="static batch of 1"):
        run_build_command([str(onnx_files["plain-fp32-static"]), "-o", str(tmp_path / "x.engine"),
                           "--max-batch", "4", "--flavor", RTX])
    assert not (tmp_path / "x.engine").exists()
