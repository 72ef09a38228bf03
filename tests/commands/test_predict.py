"""segtrt predict's torch options reach the runner as the user gave them."""

from __future__ import annotations

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
        torch_runner(_net(), _settings("--precompile", "on"), torch.device("cpu"))  # nothing is compiled
    with pytest.raises(SystemExit):
        _settings("--precompile", "sometimes")
    with pytest.raises(SettingsError, match="--precompile"):
        PredictSettings(precompile="sometimes")
