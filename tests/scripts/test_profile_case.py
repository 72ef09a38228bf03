"""scripts/profile_case.py: its interval arithmetic, and a CI-sized run on the CPU writing its JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "profile_case.py"


def _script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("profile_case", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_busy_time_is_the_union_of_overlapping_intervals_and_gaps_are_what_is_left():
    m = _script()
    intervals = [(10.0, 20.0, "a"), (15.0, 25.0, "b"), (16.0, 18.0, "c"), (40.0, 50.0, "d")]
    assert m.union_busy(intervals) == 25.0  # 10-25 and 40-50
    assert m.idle_gaps(intervals, 0.0, 60.0) == [(0.0, 10.0), (25.0, 15.0), (50.0, 10.0)]
    assert m.idle_gaps([], 0.0, 5.0) == [(0.0, 5.0)]


def test_a_tiny_cpu_profile_writes_its_json(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--workload", "tiny", "--device", "cpu", "--variant",
                           "fp32:2", "--warmup", "1", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "profile_case.json").read_text())
    assert result["workload"] == "tiny" and result["gpu_intervals"] == 0 and result["gpu_busy_s"] == 0
    assert result["wall_s"] > 0 and set(result["stage_seconds"]) >= {"upload", "preprocess", "network", "export"}
    assert "| idle gap at ms |" in done.stdout
