"""A small local Ray cluster for the scale-out tests: 2 CPUs, no dashboard, loopback only, usage statistics
off, its session files in a short temporary folder (Ray's socket paths must stay short); shut down after."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

#: Ray's files (sessions, sockets) for the tests; also given to driver subprocesses as RAY_TMPDIR.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


@pytest.fixture(scope="session")
def ray_tmpdir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="segray", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster(ray_tmpdir: Path):
    """``ray`` initialised on a local 2-CPU cluster in this process (segtrt's --ray reuses it)."""
    import ray  # a test dependency: a missing Ray fails here, loudly

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=str(ray_tmpdir),
             configure_logging=False)
    yield ray
    ray.shutdown()
