"""``segtrt build MODEL_FOLDER``: torch networks compiled ahead of a prediction run."""

from __future__ import annotations

import pytest

from segtrt.cli import main
from segtrt.config import DEFAULT_MODEL_DIR


def test_batch_size_must_be_positive(capsys):
    assert main(["build", str(DEFAULT_MODEL_DIR), "--device", "cpu", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_build_fills_the_compile_cache_then_starts_warm(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache" / "inductor"))
    import torch

    args = ["build", str(DEFAULT_MODEL_DIR), "--device", "cpu", "--batch-size", "1", "--compile", "default"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "fold 0: compile:default ncdhw fp32 batch [1, 1," in first and "(cold start" in first
    assert any((tmp_path / "cache" / "inductor").iterdir())
    torch._dynamo.reset()
    assert main(args) == 0
    assert "(warm start" in capsys.readouterr().out
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.slow
def test_predict_auto_loads_what_build_made_on_cuda(tmp_path, monkeypatch, capsys):
    # segtrt build's packages are what segtrt predict's default --compile auto loads (a warm start), same labels
    import json
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache" / "inductor"))
    sample = Path(__file__).resolve().parents[2] / "sample_data" / "example_ct.nii.gz"
    predict = ["predict", str(sample), "-m", str(DEFAULT_MODEL_DIR), "--device", "cuda", "--precision", "fp16", "-q"]

    def run(out: str, *extra: str) -> tuple[dict, np.ndarray]:
        assert main([*predict, "-o", str(tmp_path / out), *extra]) == 0
        report = json.loads((tmp_path / out / "segtrt_report.json").read_text())
        return report, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / out / "example_ct.nii.gz")))

    before, _ = run("before")  # nothing built yet: eager, and the reason names the build command
    assert before["backend"]["compile"]["chosen"] == "off" and "segtrt build" in before["backend"]["compile"]["reason"]
    assert main(["build", str(DEFAULT_MODEL_DIR), "--device", "cuda", "--precision", "fp16"]) == 0
    assert "aot:default channels_last_3d fp16 batch [4, 1," in capsys.readouterr().out
    after, labels = run("after")
    assert after["backend"]["compile"]["chosen"] == "aot"
    runner = after["backend"]["runner"]
    assert runner["path"] == "aot:default" and runner["weights"] == "fp16 copy"
    assert runner["compiled"]["start"] == "warm"
    _, eager = run("eager", "--compile", "off")
    # fp16 package vs fp16 eager: kernels differ, labels flip only at near-ties
    assert labels.shape == eager.shape and np.mean(labels == eager) >= 0.999
