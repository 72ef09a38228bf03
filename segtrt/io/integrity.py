"""Detect damaged NIfTI files, which SimpleITK reads without complaint.

Seen with SimpleITK 2.5: a ``.nii`` or ``.nii.gz`` cut in half (an interrupted copy or download), or a
``.nii.gz`` with flipped bytes in its compressed payload, is read "successfully", the missing or
damaged voxels filled with whatever the reader had, while truncated NRRD and MHA files raise. These
checks close that gap before the image reaches the model.

- header: read by nibabel; every axis must have at least one voxel (niftilib otherwise prints a raw
  ``** ERROR`` line and ITK refuses the file without saying why).
- ``.nii``: the file must hold at least ``vox_offset + voxel bytes``.
- ``.nii.gz``: the whole gzip stream is decompressed once (zlib, without keeping the data): every
  member's CRC-32 and length must match its trailer, the last member must end properly, and the
  stream must hold at least ``vox_offset + voxel bytes``. zlib releases the GIL, so this can run
  beside SimpleITK's own read (segtrt.io.images does).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from segtrt.errors import InputImageError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


def check_nifti_intact(path: Path) -> None:
    """Raise InputImageError if the NIfTI file ``path`` (.nii or .nii.gz) has an axis of size 0, holds
    fewer bytes than its header announces, or (.nii.gz) fails its gzip CRC/length check."""
    expected = expected_nifti_bytes(path)
    if path.name.endswith(".gz"):
        actual, problem = gunzip_length(path)
        if problem is not None:
            raise_damaged(path, problem)
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise_damaged(path, f"it holds {actual} bytes, its header announces {expected}")


def expected_nifti_bytes(path: Path) -> int:
    """Header offset plus voxel bytes, from the NIfTI header (read by nibabel, data untouched).

    Raises InputImageError for an unreadable header or an axis with no voxels.
    """
    try:
        proxy = nib.load(path).dataobj  # the loaded image's header has its offset reset; the proxy keeps it
    except Exception as error:  # nibabel raises many types for malformed headers
        raise InputImageError(
            f"cannot read the NIfTI header of {path} ({error}); expected a valid .nii/.nii.gz file"
        ) from None
    if any(int(size) < 1 for size in proxy.shape):
        size = "x".join(str(int(s)) for s in proxy.shape)
        raise InputImageError(f"{path} has an axis without voxels (size {size}); expected at least one voxel per axis")
    voxels = int(np.prod(proxy.shape, dtype=np.int64))
    return int(proxy.offset) + voxels * proxy.dtype.itemsize


def gunzip_length(path: Path) -> tuple[int, str | None]:
    """Decompressed length of all gzip members in ``path`` and what is wrong with the stream (None: intact).

    zlib checks each member's CRC-32 and length against its trailer (``wbits=31``).
    """
    total = 0
    decompressor = None  # the member being read; None between members
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            while chunk:
                decompressor = decompressor or zlib.decompressobj(wbits=31)
                try:
                    total += len(decompressor.decompress(chunk))
                except zlib.error as error:
                    return total, f"its compressed data are damaged ({error})"
                chunk = decompressor.unused_data if decompressor.eof else b""
                if decompressor.eof:
                    decompressor = None
    if decompressor is not None:
        return total, "its gzip stream ends early"
    return total, None


def raise_damaged(path: Path, detail: str) -> None:
    raise InputImageError(
        f"{path} is truncated or corrupt: {detail}; expected a complete NIfTI file (copy it again)"
    )
