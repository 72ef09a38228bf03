"""Write segmentations and probabilities atomically.

Every writer goes through :func:`atomic_path`: the data go to a hidden temporary file in the destination
folder, which is flushed to disk and then renamed over the destination with ``os.replace``. A reader
therefore sees the old file or the complete new one, never a partial file, and a failed write leaves
an existing destination untouched.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from segtrt.errors import OutputPathError, SegtrtError
from segtrt.io import gzip_codec
from segtrt.io.geometry import Geometry

logger = logging.getLogger(__name__)

#: File endings :func:`write_segmentation` can write (SimpleITK picks the format from the ending).
SEGMENTATION_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
_MAX_LABEL = int(np.iinfo(np.uint16).max)
#: Names of :func:`atomic_path`'s temporary files ('.<name>.<pid>.<12 hex>.tmp<ending>'), for clean-up
#: after a killed run (segtrt.batch.manifest.remove_temporary_files).
TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp(\.[A-Za-z0-9.]+)?$")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same ending) to write to; on success it replaces ``path``.

    Parent folders are created. If the body raises, the temporary file is removed and ``path`` is left
    as it was. The body must create the file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a folder; expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(f"cannot create the folder {path.parent} ({error.strerror}); "
                              "expected a writable folder path") from None
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp{_ending(path)}")
    try:
        yield temporary
        if not temporary.is_file():
            raise RuntimeError(f"atomic write of {path}: the writer did not create {temporary}")
        _flush_to_disk(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    flush_folder(path.parent)


def check_output_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) if needed and check that a file can be written in it.

    Called before any work starts, so that a wrong ``-o`` costs nothing; raises OutputPathError (one
    line) when ``folder`` is an existing file, lies below a file, or cannot be created or written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"the output {folder} is an existing file; expected a folder (give -o a folder path)")
    _probe_writable(folder, "output folder")


def check_output_file(path: Path) -> None:
    """Raise OutputPathError unless ``path`` can be written as a file: not a folder, its folder writable
    (created if needed)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"the output {path} is a folder; expected a file path such as {path / 'model.onnx'}")
    _probe_writable(path.parent, "folder of the output")


def _probe_writable(folder: Path, what: str) -> None:
    """mkdir -p ``folder`` and create (then remove) a temporary file in it; OutputPathError if either fails.

    A real write, not ``os.access``: the latter says yes to root on a read-only file system.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".segtrt-probe-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputPathError(f"cannot write the {what} {folder} ({reason}); expected a writable folder path") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_segmentation(path: Path, labels: np.ndarray, geometry: Geometry) -> Path:
    """Write a (Z, Y, X) integer label map with exactly ``geometry``'s spacing, origin and direction.

    Stored as uint8 when the largest label is <= 255, else uint16 (labels must be in 0..65535); the
    file is compressed where the format allows (.nii.gz by ISA-L at a fast level, see segtrt.io.gzip_codec).
    The format follows the ending (see SEGMENTATION_ENDINGS).
    Returns ``path``.
    """
    path = Path(path)
    _check_segmentation_ending(path)
    image = sitk.GetImageFromArray(_label_array(labels, geometry), isVector=False)
    image.SetSpacing(geometry.sitk_spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    with atomic_path(path) as temporary:
        if _ending(path) == ".nii.gz":
            _write_nifti_gz(image, temporary)
        else:
            sitk.WriteImage(image, str(temporary), True)
    logger.debug("wrote segmentation %s (%s)", path, image.GetPixelIDTypeAsString())
    return path


def _write_nifti_gz(image: sitk.Image, path: Path) -> None:
    """ITK writes the NIfTI uncompressed beside ``path`` (a temporary name that a killed run's clean-up
    knows), ISA-L compresses it into ``path``: 12x faster than ITK's own gzip (segtrt.io.gzip_codec)."""
    raw = path.with_name(path.name.removesuffix(".gz"))
    try:
        sitk.WriteImage(image, str(raw), False)
        gzip_codec.gzip_file(raw, path)
    finally:
        raw.unlink(missing_ok=True)


def write_probabilities(path: Path, probabilities: np.ndarray) -> Path:
    """Write (K, Z, Y, X) class probabilities as a compressed ``.npz`` with key 'probabilities', float32.

    This is the file nnU-Net writes with ``--save_probabilities`` (nnU-Net also writes a ``.pkl`` of
    properties next to it, which segtrt does not). Returns ``path``.
    """
    path = Path(path)
    if not path.name.endswith(".npz"):
        raise ValueError(f"probabilities are written to a .npz file, got {path}")
    if probabilities.ndim != 4:
        raise ValueError(f"probabilities must be (K, Z, Y, X), got shape {probabilities.shape}")
    array = np.asarray(probabilities, dtype=np.float32)
    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        np.savez_compressed(handle, probabilities=array)
    return path


def _label_array(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Validate a (Z, Y, X) label map and cast it to uint8 or uint16."""
    if labels.shape != geometry.shape:
        raise ValueError(f"labels of shape {labels.shape} do not fit the geometry's shape {geometry.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise TypeError(f"labels must be an integer array, got {labels.dtype}")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > _MAX_LABEL:
        raise ValueError(f"labels must lie in 0..{_MAX_LABEL}, got {low}..{high}")
    dtype = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16
    return np.ascontiguousarray(labels, dtype=dtype)


def _check_segmentation_ending(path: Path) -> None:
    if not path.name.endswith(SEGMENTATION_ENDINGS):
        raise SegtrtError(
            f"cannot write a segmentation to {path}: unsupported file type; "
            f"expected a name ending in {', '.join(SEGMENTATION_ENDINGS)}"
        )


def _ending(path: Path) -> str:
    """The ending that selects the file format ('.nii.gz' counts as one ending)."""
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def _flush_to_disk(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def flush_folder(folder: Path) -> None:
    """Make the rename durable where the platform allows syncing a folder (POSIX)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
