"""scripts/transfer_probe.py: its chunked parallel copy, and a CI-sized CPU run writing its JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "transfer_probe.py"


def test_chunked_copy_copies_every_element_whatever_the_split():
    spec = importlib.util.spec_from_file_location("transfer_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = np.random.default_rng(0).integers(-1000, 1000, size=(1, 7, 5, 3)).astype(np.int16)
    with ThreadPoolExecutor(3) as pool:
        for parts in (1, 2, 3, 7, 105):
            dst = np.zeros_like(src)
            module.chunked_copy(dst, src, pool, parts)
            np.testing.assert_array_equal(dst, src)


def test_a_small_cpu_probe_writes_its_json(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--scale", "0.01", "--threads", "2",
                           "--repeats", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "transfer_probe.json").read_text())
    assert set(result["volumes"]) == {"ct int16", "ct float32", "labels uint8"}
    rows = result["volumes"]["ct float32"]["seconds"]
    assert set(rows) == {"host copy -> ordinary, 1 thread", "host copy -> ordinary, 2 threads"}
    assert all(v > 0 for v in rows.values()) and "| ct int16 |" in done.stdout
