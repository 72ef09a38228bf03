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
