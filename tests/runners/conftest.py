"""Shared fixtures of the runner tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def compile_caches(tmp_path, monkeypatch) -> Path:
    """Empty inductor and segtrt caches of this test's own (``tmp_path/inductor``, ``tmp_path/segtrt``);
    returns segtrt's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("SEGTRT_CACHE_DIR", str(tmp_path / "segtrt"))
    return tmp_path / "segtrt"
