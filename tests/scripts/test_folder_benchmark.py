"""scripts/folder_benchmark.py at CI size: it writes the cases, runs nnU-Net's CLI and segtrt (cold and
warm caches) as subprocesses, compares their labels and writes its JSON and table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "folder_benchmark.py"


@pytest.mark.slow
def test_tiny_folder_benchmark_on_the_cpu(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--workload", "tiny", "--cases", "2", "--device", "cpu",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    body = json.loads((tmp_path / "folder_benchmark.json").read_text())
    tools = [run["tool"] for run in body["runs"]]
    assert tools == ["nnU-Net CLI", "segtrt cold", "segtrt warm"]
    for run in body["runs"][1:]:
        assert run["cases_done"] == 2 and run["exit_code"] == 0
        assert run["labels"]["cases"] == 2 and run["labels"]["agreement_min"] > 0.99
        assert {"read", "network", "write"} <= set(run["stage_median_s"])
        assert run["vs_nnunet"] > 0
    assert "| segtrt warm | off |" in result.stdout
