"""Detect truncated NIfTI files, which SimpleITK reads without complaint.

Seen with SimpleITK 2.5: a ``.nii`` or ``.nii.gz`` cut in half (an interrupted copy or download) is
read "successfully", the missing voxels filled with whatever the reader had, while truncated NRRD and
MHA files raise. These checks close that gap before the image reaches the model.

- ``.nii``: the file must hold at least ``vox_offset + voxel bytes``.
- ``.nii.gz``: gzip's trailer stores the uncompressed size (mod 2**32); when it equals
  ``vox_offset + voxel bytes`` the file is complete. Otherwise (a truncated file, or a valid file made
  of several gzip members) the stream is decompressed once to check that it ends properly and holds
  enough bytes.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from segtrt.errors import InputImageError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def check_nifti_complete(path: Path) -> None:
    """Raise InputImageError if the NIfTI file ``path`` (.nii or .nii.gz) holds fewer bytes than its header
    announces or ends inside its gzip stream."""
    expected = _expected_nifti_bytes(path)
    if path.name.lower().endswith(".gz"):
        if _gzip_trailer_size(path) == expected % (1 << 32):
            return
        logger.debug("%s: gzip trailer does not match the header; decompressing to check it", path)
        actual, ended = _gunzip_length(path)
        if not ended:
            _raise_truncated(path, "its gzip stream ends early")
    else:
        actual = path.stat().st_size
    if actual < expected:
        _raise_truncated(path, f"it holds {actual} bytes, its header announces {expected}")


def _expected_nifti_bytes(path: Path) -> int:
    """Header offset plus voxel bytes, from the NIfTI header (read by nibabel, data untouched)."""
    try:
        proxy = nib.load(path).dataobj  # the loaded image's header has its offset reset; the proxy keeps it
    except Exception as error:  # nibabel raises many types for malformed headers
        raise InputImageError(
            f"cannot read the NIfTI header of {path} ({error}); expected a valid .nii/.nii.gz file"
        ) from None
    voxels = int(np.prod(proxy.shape, dtype=np.int64))
    return int(proxy.offset) + voxels * proxy.dtype.itemsize


def _gzip_trailer_size(path: Path) -> int:
    """The ISIZE field (last 4 bytes, little endian) of a gzip file; -1 when the file is too short."""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() < 18:
            return -1
        handle.seek(-4, 2)
        return int.from_bytes(handle.read(4), "little")


def _gunzip_length(path: Path) -> tuple[int, bool]:
    """Decompressed length of all gzip members in ``path`` and whether the last member ended properly."""
    total, ended = 0, True
    decompressor = zlib.decompressobj(wbits=31)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            while chunk:
                try:
                    total += len(decompressor.decompress(chunk))
                except zlib.error:
                    return total, False
                if not decompressor.eof:
                    ended, chunk = False, b""
                    continue
                ended, chunk = True, decompressor.unused_data
                if chunk:
                    decompressor = zlib.decompressobj(wbits=31)
    return total, ended


def _raise_truncated(path: Path, detail: str) -> None:
    raise InputImageError(
        f"{path} is truncated or corrupt: {detail}; expected a complete NIfTI file (copy it again)"
    )
