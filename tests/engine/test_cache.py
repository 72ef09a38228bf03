"""The engine cache with real TensorRT-RTX builds on the CPU: keys, hits and misses, concurrent
builders, refusal of engines built for something else, atomic writes.

GPU targets are injected (``BuildTarget``) so GPU-specific keys and mismatches are tested without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import tensorrt_rtx  # noqa: F401  (TensorRT-RTX, a test dependency, builds the plans: missing = failure)

from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from segtrt.engine.build import BuildOptions  # noqa: E402
from segtrt.engine.cache import (  # noqa: E402
    CPU_BUILD_TARGET,
    BuildTarget,
    cache_key,
    current_target,
    get_or_build,
    key_fields,
    metadata_path,
    sha256_onnx,
)
from segtrt.errors import EngineError  # noqa: E402
from segtrt.export import export_onnx  # noqa: E402

RTX = "tensorrt-rtx"
GPU_A = BuildTarget("Test GPU A", "8.6")
GPU_B = BuildTarget("Test GPU B", "8.9")
OPTIONS = BuildOptions(max_batch=2, flavor=RTX)


def export_tiny_unet(path: Path, seed: int) -> Path:
    """PlainConvUNet, 3 stages (8, 16, 32), InstanceNorm3d + LeakyReLU; input (N, 1, 16, 32, 32), N dynamic.

    segtrt's exporter without its ONNX Runtime check (check=False: covered by its own tests)."""
    torch.manual_seed(seed)
    net = PlainConvUNet(
        1, 3, (8, 16, 32), nn.Conv3d, 3, (1, 2, 2), 2, 3, 1, True, nn.InstanceNorm3d,
        {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
    ).eval()
    export_onnx(net, path, patch_size=(16, 32, 32), in_channels=1, dynamic_batch=True, check=False)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """Two ONNX files with the same graph and different weights."""
    folder = tmp_path_factory.mktemp("models")
    return export_tiny_unet(folder / "a.onnx", seed=0), export_tiny_unet(folder / "b.onnx", seed=1)


def engine_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.engine"))


def test_key_changes_with_every_input(models):
    sha_a, sha_b = sha256_onnx(models[0]), sha256_onnx(models[1])
    base = dict(onnx_sha256=sha_a, flavor=RTX, version="1.7.1", target=GPU_A, options=OPTIONS)
    variations = [
        {},
        {"onnx_sha256": sha_b},
        {"flavor": "tensorrt"},
        {"version": "1.7.2"},
        {"target": BuildTarget("Test GPU B", "8.6")},
        {"target": BuildTarget("Test GPU A", "8.9")},
        {"target": BuildTarget(CPU_BUILD_TARGET)},
        {"options": BuildOptions(max_batch=3, flavor=RTX)},
        {"options": BuildOptions(min_batch=2, max_batch=2, flavor=RTX)},
        {"options": BuildOptions(opt_batch=1, max_batch=2, flavor=RTX)},
        {"options": BuildOptions(max_batch=2, opt_level=5, flavor=RTX)},
        {"options": BuildOptions(max_batch=2, workspace_mb=512, flavor=RTX)},
    ]
    keys = [cache_key(key_fields(**{**base, **change})) for change in variations]
    assert len(set(keys)) == len(variations)
    # a timing cache speeds the build up but does not change the engine; defaults equal their values
    same = [
        BuildOptions(max_batch=2, timing_cache=Path("tc.bin"), flavor=RTX),
        BuildOptions(min_batch=1, opt_batch=2, max_batch=2, flavor=RTX),
    ]
    assert all(cache_key(key_fields(**{**base, "options": o})) == keys[0] for o in same)
    assert cache_key(key_fields(**base)) == keys[0]  # deterministic


def test_onnx_hash_covers_external_weights(models, tmp_path):
    model = onnx.load(str(models[0]))
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="external.onnx.data", size_threshold=0)
    before = sha256_onnx(path)
    data = bytearray((tmp_path / "external.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "external.onnx.data").write_bytes(bytes(data))
    assert sha256_onnx(path) != before
    assert sha256_onnx(models[0]) != sha256_onnx(models[1])


def test_miss_then_hit_and_metadata(models, tmp_path):
    first = get_or_build(models[0], OPTIONS, tmp_path, target=GPU_A)
    second = get_or_build(models[0], OPTIONS, tmp_path, target=GPU_A)
    assert (first.hit, second.hit) == (False, True)
    assert first.plan_path == second.plan_path and first.build is not None and second.build is None
    assert first.plan_path.read_bytes() == first.build.plan
    meta = json.loads(metadata_path(first.plan_path).read_text())
    assert meta["key"] == first.plan_path.stem
    assert meta["fields"]["onnx_sha256"] == sha256_onnx(models[0])
    assert (meta["fields"]["gpu_name"], meta["fields"]["compute_capability"]) == ("Test GPU A", "8.6")
    assert (meta["fields"]["flavor"], meta["fields"]["batch_range"]) == (RTX, [1, 2, 2])
    assert meta["io"] == [spec.as_dict() for spec in first.build.io]
    # every other input is a miss with its own entry
    assert not get_or_build(models[1], OPTIONS, tmp_path, target=GPU_A).hit
    assert not get_or_build(models[0], BuildOptions(max_batch=3, flavor=RTX), tmp_path, target=GPU_A).hit
    assert not get_or_build(models[0], OPTIONS, tmp_path, target=GPU_B).hit
    assert len(engine_files(tmp_path)) == 4
    assert not list(tmp_path.glob(".*.tmp"))


def test_default_cache_dir_comes_from_settings(models, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "segtrt-cache"))
    cached = get_or_build(models[0], OPTIONS, target=GPU_A)
    assert cached.plan_path.parent == tmp_path / "segtrt-cache" / "engines"


def test_cpu_only_machine_uses_explicit_target():
    target = current_target()
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        assert target == BuildTarget(torch.cuda.get_device_name(), f"{major}.{minor}")
    else:
        assert target == BuildTarget(CPU_BUILD_TARGET, None)


def _build_after_barrier(onnx_path: str, cache_dir: str, barrier, results) -> None:
    barrier.wait(timeout=120)
    cached = get_or_build(onnx_path, OPTIONS, cache_dir, target=GPU_A)
    results.put((cached.hit, str(cached.plan_path), cached.metadata.plan_sha256))


def test_concurrent_builders_produce_one_plan(models, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_build_after_barrier, args=(str(models[0]), str(tmp_path), barrier, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    hits = sorted(hit for hit, _, _ in outcomes)
    assert hits == [False, True]  # one built, the other waited on the lock and reused it
    assert len({path for _, path, _ in outcomes}) == 1 and len({sha for _, _, sha in outcomes}) == 1
    assert len(engine_files(tmp_path)) == 1 and not list(tmp_path.glob(".*.tmp"))


def test_engine_for_another_gpu_is_refused_then_rebuilt(models, tmp_path):
    engine = tmp_path / "model.engine"
    get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_A)
    with pytest.raises(EngineError) as info:
        get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_B)
    message = str(info.value)
    assert "GPU gpu_name is 'Test GPU A', wanted 'Test GPU B'" in message
    assert "compute_capability is '8.6', wanted '8.9'" in message and "rebuild=True" in message
    rebuilt = get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_B, rebuild=True)
    assert not rebuilt.hit and rebuilt.metadata.fields["gpu_name"] == "Test GPU B"
    assert get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_B).hit


def test_engine_for_another_model_or_tensorrt_is_refused(models, tmp_path):
    engine = tmp_path / "model.engine"
    get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_A)
    with pytest.raises(EngineError, match="model onnx_sha256 is"):
        get_or_build(models[1], OPTIONS, engine_path=engine, target=GPU_A)
    meta_file = metadata_path(engine)
    meta = json.loads(meta_file.read_text())
    meta["fields"]["trt_version"] = "0.9.0"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(EngineError, match="TensorRT trt_version is '0.9.0', wanted"):
        get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_A)
    assert not get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_A, rebuild=True).hit


def test_changed_plan_in_the_cache_is_rebuilt(models, tmp_path, caplog):
    cached = get_or_build(models[0], OPTIONS, tmp_path, target=GPU_A)
    original = cached.plan_path.read_bytes()
    cached.plan_path.write_bytes(original[: len(original) // 2])
    repaired = get_or_build(models[0], OPTIONS, tmp_path, target=GPU_A)
    assert not repaired.hit and repaired.plan_path == cached.plan_path
    assert hashlib.sha256(repaired.plan_path.read_bytes()).hexdigest() == repaired.metadata.plan_sha256
    assert "unusable, rebuilding it" in caplog.text and "does not match the checksum" in caplog.text
    assert get_or_build(models[0], OPTIONS, tmp_path, target=GPU_A).hit


@pytest.mark.parametrize("damage", ["truncated-json", "foreign-json"])
def test_corrupt_or_foreign_metadata_in_the_cache_is_rebuilt(models, tmp_path, damage):
    cached = get_or_build(models[0], OPTIONS, tmp_path, target=GPU_A)
    meta_file = metadata_path(cached.plan_path)
    text = meta_file.read_text()
    meta_file.write_text(text[: len(text) // 2] if damage == "truncated-json" else json.dumps({"some": "tool"}))
    rebuilt = get_or_build(models[0], OPTIONS, tmp_path, target=GPU_A)
    assert not rebuilt.hit and json.loads(meta_file.read_text())["plan_sha256"] == rebuilt.metadata.plan_sha256


def test_changed_plan_at_a_chosen_path_is_refused_with_its_path(models, tmp_path):
    engine = tmp_path / "mine.engine"
    get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_A)
    engine.write_bytes(engine.read_bytes()[:100])
    with pytest.raises(EngineError, match=r"engine .*mine\.engine does not match the checksum"):
        get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_A)
    metadata_path(engine).write_text("{")
    with pytest.raises(EngineError, match=r"mine\.engine\.json is unreadable .*delete .*mine\.engine"):
        get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_A)
    assert not get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_A, rebuild=True).hit


def test_plan_without_metadata_is_refused(models, tmp_path):
    engine = tmp_path / "foreign.engine"
    engine.write_bytes(b"not a plan segtrt wrote")
    with pytest.raises(EngineError, match="has no metadata file foreign.engine.json"):
        get_or_build(models[0], OPTIONS, engine_path=engine, target=GPU_A)
