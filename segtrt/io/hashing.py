"""Content hashes of files, read in chunks (model identities, cached compiled networks)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 22


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
