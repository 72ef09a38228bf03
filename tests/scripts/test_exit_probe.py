"""scripts/exit_probe.py: a real segtrt run on the bundled sample, with its exit steps reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_probe_reports_each_exit_step_of_a_real_run(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "exit_probe.py"), "predict",
                           str(ROOT / "sample_data" / "example_ct.nii.gz"), "-o", str(out), "--device", "cpu",
                           "--no-progress"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "example_ct.nii.gz").is_file()
    lines = [line for line in done.stderr.splitlines() if line.startswith("[exit_probe ")]
    steps = [line.split("] ", 1)[1] for line in lines]
    assert steps[0].startswith("main returned; report finished_epoch 1") and "MainThread" in steps[0], steps
    assert any(s.startswith("threads joined in ") for s in steps)
    assert any(s.startswith("exit handlers in ") for s in steps)
    assert steps[-1] == "os._exit(0)", steps
