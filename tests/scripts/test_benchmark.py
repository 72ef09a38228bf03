"""scripts/benchmark.py: every variant path names a --compile value segtrt accepts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from segtrt.config import COMPILE_MODES, PredictSettings

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("segtrt_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path, expected", [("eager", "off"), ("compile", "default"), ("compile-graph", "default"),
                                            ("autotune", "max-autotune"), ("graph", "off")])
def test_each_variant_path_is_a_compile_value_the_settings_accept(path, expected):
    variant = _benchmark_module().Variant.parse(f"fp16:4:{path}")
    assert variant.compile == expected
    # the whole-case run builds PredictSettings from it; the network timing maps it to torch's mode
    assert PredictSettings(device="cpu", compile=variant.compile).compile == expected
    assert (COMPILE_MODES[variant.compile] is None) == (expected == "off")
