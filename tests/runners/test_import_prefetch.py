"""The background import of torch.compile's machinery (segtrt.runners.import_prefetch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from segtrt.runners.import_prefetch import COMPILE_MODULES, Prefetch

ROOT = Path(__file__).resolve().parents[2]

FRESH = r"""
import json, sys
import torch
assert "torch._dynamo" not in sys.modules, "a fresh interpreter must not have torch._dynamo yet"
from segtrt.runners import import_prefetch
first = import_prefetch.start(cuda=False)
assert import_prefetch.start(cuda=True) is first  # once per process
import_prefetch.wait()
print(json.dumps({"summary": import_prefetch.summary(), "loaded": [m for m in first.modules if m in sys.modules]}))
"""


def test_prefetch_imports_the_compile_modules_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    summary = out["summary"]
    assert summary["modules"] == list(COMPILE_MODULES)
    assert summary["finished"] is True and "failed" not in summary
    assert out["loaded"] == list(COMPILE_MODULES)
    assert set(summary["seconds"]) == set(COMPILE_MODULES) and all(s >= 0 for s in summary["seconds"].values())
    assert summary["main_thread_waited_seconds"] >= 0


def test_a_module_that_fails_to_import_is_recorded_not_raised():
    prefetch = Prefetch(("segtrt_no_such_module_for_this_test", "json"))
    prefetch._thread.start()
    prefetch.wait()
    summary = prefetch.summary()
    assert list(summary["failed"]) == ["segtrt_no_such_module_for_this_test"]
    assert "ModuleNotFoundError" in summary["failed"]["segtrt_no_such_module_for_this_test"]
    assert set(summary["seconds"]) == {"segtrt_no_such_module_for_this_test", "json"}  # went on after the failure
