"""scripts/transfer_probe.py: a CI-sized CPU run writing its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "transfer_probe.py"


def test_a_small_cpu_probe_writes_its_json(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--scale", "0.01", "--threads", "2",
                           "--repeats", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "transfer_probe.json").read_text())
    assert set(result["volumes"]) == {"ct int16", "ct float32", "labels uint8"}
    rows = result["volumes"]["ct float32"]["seconds"]
    assert set(rows) == {"host copy -> ordinary, 1 thread", "host copy -> ordinary, 2 threads"}
    assert all(v > 0 for v in rows.values()) and "| ct int16 |" in done.stdout
