"""Connecting to Ray: a local cluster started in this process, or a running cluster joined by address.

Ray is an optional extra (``pip install "segtrt[ray]"``) imported only here and in
segtrt.scaleout.workers, only when ``--ray`` is given. A local cluster is started without the dashboard,
bound to the loopback address, and with Ray's usage statistics off (RAY_USAGE_STATS_ENABLED=0 unless
the environment sets it), so a local run reaches no network.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from segtrt.errors import BackendUnavailableError, OutputError

log = logging.getLogger(__name__)

LOCAL = "local"
_ADDRESS = re.compile(r"^(auto|ray://[^\s/]+:\d+|[^\s/:]+:\d+)$")
MARKER_PREFIX = ".segtrt-storage-check-"


def import_ray():
    """The ``ray`` module, or a segtrt error saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise BackendUnavailableError(f"--ray needs Ray, which is not installed ({error}); install it with "
                                      "pip install \"segtrt[ray]\"") from None
    return ray


def check_address(address: str) -> str:
    """'local', 'auto', 'host:port' or 'ray://host:port'; anything else is refused (e.g. an input folder
    that ``--ray`` took as its address)."""
    if address == LOCAL or _ADDRESS.match(address):
        return address
    raise BackendUnavailableError(f"--ray ADDRESS must be host:port, ray://host:port or auto, got {address!r} "
                                  "(without an address, put --ray after the inputs, or write --ray=host:port)")


@dataclass
class Connection:
    """How this process is attached to Ray: ``started`` when it started (and so stops) the cluster."""

    address: str
    started: bool
    joined_existing_session: bool = False

    def close(self) -> None:
        ray = import_ray()
        if self.started and ray.is_initialized():
            ray.shutdown()


def connect(address: str) -> Connection:
    """Start a local cluster ('local') or join a running one; reuse a session this process already has
    (then it is left running at the end)."""
    ray = import_ray()
    if ray.is_initialized():
        log.info("using the Ray session this process already has")
        return Connection(address, started=False, joined_existing_session=True)
    if address == LOCAL:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
        log.info("started a local Ray cluster (%s CPUs, %s GPUs)", ray.cluster_resources().get("CPU", 0),
                 ray.cluster_resources().get("GPU", 0))
    else:
        ray.init(address=address, configure_logging=False)
        log.info("joined the Ray cluster at %s: %s", address, ray.cluster_resources())
    return Connection(address, started=True)


def check_shared_output(output_dir: Path, address: str) -> None:
    """With a cluster address, ``-o`` must be absolute: a relative path means another folder on each node."""
    if address != LOCAL and not output_dir.is_absolute():
        raise OutputError(f"with --ray {address}, -o must be an absolute path on storage every node mounts at the "
                          f"same path; got {output_dir}")


def write_marker(output_dir: Path) -> tuple[Path, str]:
    """A file in ``output_dir`` holding a random token, which every actor must read back (shared storage)."""
    for stale in output_dir.glob(f"{MARKER_PREFIX}*"):  # left by a driver killed while starting
        stale.unlink(missing_ok=True)
    token = secrets.token_hex(8)
    marker = output_dir / f"{MARKER_PREFIX}{token}"
    marker.write_text(token + "\n", encoding="utf-8")
    return marker, token
