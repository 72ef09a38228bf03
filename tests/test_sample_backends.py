"""The accelerator paths on the bundled sample model (CPU): ONNX Runtime vs torch, verify, TensorRT-RTX plans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segtrt.cli import main
from segtrt.config import DEFAULT_MODEL_DIR

SAMPLE_CT = Path(__file__).resolve().parents[1] / "sample_data" / "example_ct.nii.gz"
COMMON = ["--device", "cpu", "--no-progress"]


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 2.0 * np.logical_and(x, y).sum() / max(x.sum() + y.sum(), 1)


@pytest.fixture(scope="module")
def torch_labels(tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("torch")
    assert main(["predict", str(SAMPLE_CT), "-o", str(out), *COMMON]) == 0
    return _labels(out / "example_ct.nii.gz")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_backend_matches_torch(precision, torch_labels, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "ort"
    args = ["predict", str(SAMPLE_CT), "-o", str(out), "--backend", "onnxruntime", "--precision", precision, *COMMON]
    assert main(args) == 0
    ours = _labels(out / "example_ct.nii.gz")
    present = [k for k in np.unique(torch_labels) if k != 0]
    assert len(present) >= 3, "the sample model should find several organs"
    dice = {int(k): _dice(ours, torch_labels, k) for k in present}
    print(f"\nORT {precision} vs torch on the sample: agreement {(ours == torch_labels).mean():.6f}, dice {dice}")
    assert min(dice.values()) >= 0.99, dice
    report = json.loads((out / "segtrt_report.json").read_text())
    assert report["backend"]["backend"] == "onnxruntime"
    # second run reuses the cached export
    assert main(args) == 0
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_verify_passes_on_the_sample(precision, tmp_path, capsys):
    report = tmp_path / "verify.json"
    code = main(["verify", "--backend", "onnxruntime", "--precision", precision, "--device", "cpu",
                 "--json", str(report)])
    assert code == 0, capsys.readouterr().out
    assert json.loads(report.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_sample_model_builds_a_tensorrt_rtx_plan(precision, tmp_path, capsys):
    import tensorrt_rtx  # noqa: F401  (a test dependency: missing = failure)
    onnx_path = tmp_path / f"sample_{precision}.onnx"
    assert main(["export", "-m", str(DEFAULT_MODEL_DIR), "-o", str(onnx_path), "--dynamic-batch",
                 "--precision", precision]) == 0
    engine = tmp_path / f"sample_{precision}.engine"
    assert main(["build", str(onnx_path), "-o", str(engine), "--max-batch", "4", "--flavor", "tensorrt-rtx"]) == 0
    assert engine.stat().st_size > 100_000
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    text = json.dumps(meta)
    assert "image" in text and "logits" in text
    print(f"\nplan {precision}: {engine.stat().st_size / 1e6:.2f} MB")
