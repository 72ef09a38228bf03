"""scripts/warm_start_probe.py: its steps need a GPU; what runs here is its reading of ``-X importtime``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "warm_start_probe.py"


def _probe():
    spec = importlib.util.spec_from_file_location("warm_start_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slowest_imports_are_read_from_real_importtime_output():
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import json, email.parser"],
                          capture_output=True, text=True, check=True)
    slowest = _probe().import_times(done.stderr, count=5)
    assert 1 <= len(slowest) <= 5
    assert [us for us, _ in slowest] == sorted((us for us, _ in slowest), reverse=True)
    names = {name.strip() for _, name in _probe().import_times(done.stderr, count=1000)}
    assert {"json", "email.parser"} <= names
    assert all(isinstance(us, int) and us >= 0 for us, _ in slowest)
