"""Detect damaged NIfTI files, which SimpleITK reads without complaint.

Seen with SimpleITK 2.5: a ``.nii`` or ``.nii.gz`` cut in half (an interrupted copy or download), or a
``.nii.gz`` with flipped bytes in its compressed payload, is read "successfully", the missing or
damaged voxels filled with whatever the reader had, while truncated NRRD and MHA files raise. These
checks close that gap before the image reaches the model.

- header: read by nibabel; every axis must have at least one voxel (niftilib otherwise prints a raw
  ``** ERROR`` line and ITK refuses the file without saying why).
- ``.nii``: the file must hold at least ``vox_offset + voxel bytes``.
- ``.nii.gz``: the whole gzip stream is decompressed once (ISA-L, segtrt.io.gzip_codec, without keeping
  the data): every member's CRC-32 and length must match its trailer, the last member must end properly,
  and the stream must hold at least ``vox_offset + voxel bytes``. ISA-L releases the GIL, so this runs
  beside SimpleITK's own read (segtrt.io.images does).

Non-finite voxels: ITK's NIfTI reader (SimpleITK 2.5.7 / ITK 5.4, measured) turns NaN and +-Inf
voxels into 0 without a word, while its NRRD and MHA readers keep them. For a floating-point NIfTI
the same pass therefore also finds the non-finite voxels of the file (``NonFiniteVoxels``), so that
the reader can put them back and segtrt's non-finite policy sees what the file holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from segtrt.errors import InputImageError
from segtrt.io import gzip_codec

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
#: More non-finite voxels than this in one file are refused outright (their positions would not fit).
MAX_NONFINITE = 1 << 24


@dataclass(frozen=True)
class NonFiniteVoxels:
    """The non-finite voxels of one file: flat indices in (z, y, x) C order (= NIfTI's storage order) and
    their values (NaN, +inf, -inf), float64."""

    indices: np.ndarray
    values: np.ndarray


def check_nifti_intact(path: Path) -> NonFiniteVoxels | None:
    """Raise InputImageError if the NIfTI file ``path`` (.nii or .nii.gz) has an axis of size 0, holds
    fewer bytes than its header announces, or (.nii.gz) fails its gzip CRC/length check.

    Returns the file's non-finite voxels when its voxel type is floating point and it has any, else None.
    """
    layout = nifti_layout(path)
    scan = _NonFiniteScan(layout) if layout.dtype.kind == "f" else None
    if path.name.lower().endswith(".gz"):
        actual, problem = gunzip_length(path, scan.feed if scan else None)
        if problem is not None:
            raise_damaged(path, problem)
    else:
        actual = path.stat().st_size
        if scan is not None and actual >= layout.end:
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    scan.feed(chunk)
    if actual < layout.end:
        raise_damaged(path, f"it holds {actual} bytes, its header announces {layout.end}")
    return scan.result(path) if scan else None


@dataclass(frozen=True)
class NiftiLayout:
    """Where the voxels are in the (decompressed) file: bytes [offset, end), ``dtype`` with byte order."""

    offset: int
    voxels: int
    dtype: np.dtype

    @property
    def end(self) -> int:
        return self.offset + self.voxels * self.dtype.itemsize


def nifti_layout(path: Path) -> NiftiLayout:
    """The voxel layout from the NIfTI header (read by nibabel, data untouched).

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
    return NiftiLayout(int(proxy.offset), int(np.prod(proxy.shape, dtype=np.int64)), np.dtype(proxy.dtype))


class _NonFiniteScan:
    """Fed the decompressed file in pieces; finds the non-finite values of the voxel block."""

    def __init__(self, layout: NiftiLayout) -> None:
        self.layout = layout
        self.position = 0  # bytes of the file seen so far
        self.carry = b""  # a voxel split between two pieces
        self.indices: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.count = 0

    def feed(self, data: bytes) -> None:
        start, self.position = self.position, self.position + len(data)
        low, high = max(self.layout.offset, start), min(self.layout.end, self.position)
        if low >= high:
            return
        block = self.carry + data[low - start:high - start]
        first = (low - self.layout.offset - len(self.carry)) // self.layout.dtype.itemsize
        whole = len(block) - len(block) % self.layout.dtype.itemsize
        self.carry = block[whole:]
        values = np.frombuffer(block[:whole], dtype=self.layout.dtype)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            self.count += int(bad.size)
            self.indices.append(bad + first)
            self.values.append(values[bad].astype(np.float64))

    def result(self, path: Path) -> NonFiniteVoxels | None:
        if not self.count:
            return None
        if self.count > MAX_NONFINITE:
            raise InputImageError(f"{path} has {self.count} NaN or infinite voxels of {self.layout.voxels}; "
                                  "expected finite intensities")
        return NonFiniteVoxels(np.concatenate(self.indices), np.concatenate(self.values))


def gunzip_length(path: Path, consume=None) -> tuple[int, str | None]:
    """Decompressed length of all gzip members in ``path`` and what is wrong with the stream (None: intact).

    The decompressor checks each member's CRC-32 and length against its trailer. ``consume`` (optional)
    is called with every decompressed piece, in order.
    """
    total = 0
    decompressor = None  # the member being read; None between members
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            while chunk:
                decompressor = decompressor or gzip_codec.decompressor()
                try:
                    piece = decompressor.decompress(chunk)
                except gzip_codec.Error as error:
                    return total, f"its compressed data are damaged ({error})"
                total += len(piece)
                if consume is not None and piece:
                    consume(piece)
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
