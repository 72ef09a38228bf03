"""segtrt predict's torch options reach the runner as the user gave them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segtrt.backends import torch_runner
from segtrt.cli import build_parser
from segtrt.commands.predict import settings_from_args
from segtrt.config import PredictSettings
from segtrt.errors import BackendUnavailableError, SettingsError


def _settings(*options: str):
    args = build_parser().parse_args(["predict", "scan.nii.gz", "-o", "out", "--device", "cpu", *options])
    return settings_from_args(args)[0]


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1))


@pytest.mark.parametrize(("given", "expected"), [((), False), (("--precompile", "on"), True),
                                                 (("--precompile", "off"), False)])
def test_precompile_option_reaches_the_torch_runner(given, expected):
    settings = _settings("--compile", "default", *given)
    runner = torch_runner(_net(), settings, torch.device("cpu"))
    assert runner.precompile is expected  # auto is off on the CPU
    assert runner.describe()["precompile"] is expected


def test_precompile_is_refused_where_it_cannot_apply():
    with pytest.raises(BackendUnavailableError, match="--precompile on applies to"):
        torch_runner(_net(), _settings("--compile", "off", "--precompile", "on"), torch.device("cpu"))  # nothing compiled
    with pytest.raises(ValueError, match="auto resolved first"):  # create_runners resolves it (compile_choice)
        torch_runner(_net(), _settings("--precompile", "on"), torch.device("cpu"))
    with pytest.raises(SystemExit):
        _settings("--precompile", "sometimes")
    with pytest.raises(SettingsError, match="--precompile"):
        PredictSettings(precompile="sometimes")


@pytest.mark.slow
def test_a_compiled_predict_imports_the_compile_machinery_in_the_background_when_asked(tmp_path, monkeypatch):
    import json

    from segtrt.batch.report import REPORT_NAME
    from segtrt.cli import main
    from segtrt.config import DEFAULT_MODEL_DIR

    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache" / "inductor"))
    monkeypatch.setenv("SEGTRT_IMPORT_PREFETCH", "1")  # opt-in (measured slower on the H200)
    out = tmp_path / "out"
    sample = Path(__file__).resolve().parents[2] / "sample_data" / "example_ct.nii.gz"
    assert main(["predict", str(sample), "-m", str(DEFAULT_MODEL_DIR), "-o", str(out), "--device", "cpu",
                 "--compile", "default", "--no-tta", "-q"]) == 0
    torch._dynamo.reset()
    runner = json.loads((out / REPORT_NAME).read_text())["backend"]["runner"]
    prefetch = runner["import_prefetch"]
    assert prefetch["modules"] == ["torch._dynamo", "torch._inductor.compile_fx"]  # no Triton for --device cpu
    assert prefetch["finished"] is True and "failed" not in prefetch
    assert "import_wait" in runner["activate_seconds"]
