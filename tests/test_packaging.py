"""A built wheel carries the bundled demonstration model as package data (the default without -m)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_demonstration_model(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    wheel = next(tmp_path.glob("segtrt-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth", "SOURCE.md"):
        assert f"segtrt/sample_model/{name}" in names, name
    with zipfile.ZipFile(wheel) as archive:
        packaged = archive.read("segtrt/sample_model/fold_0/checkpoint_final.pth")
    assert packaged == (REPO / "segtrt" / "sample_model" / "fold_0" / "checkpoint_final.pth").read_bytes()
