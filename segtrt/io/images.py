"""Read the channels of one case into a (C, Z, Y, X) array and its Geometry.

Same semantics as nnU-Net v2's ``SimpleITKIO.read_images``: SimpleITK reads each file, the array is in
(z, y, x) order, SimpleITK's (x, y, z) spacing is reversed, values are float32 — except that 8- and
16-bit integer images (most CT and MR files) stay integers: every such value is exactly a float32, so
casting later (on the GPU, after a transfer of half the bytes) gives nnU-Net's float32 array. Stricter than
nnU-Net: every channel must be a scalar 3D image and all channels must share shape, spacing, origin and
direction (nnU-Net only warns about origin and direction). Inputs are only read, never modified.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from segtrt.errors import InputImageError
from segtrt.io.dicom import DicomSeries, read_dicom_files, read_dicom_series
from segtrt.io.geometry import Geometry
from segtrt.io.integrity import check_nifti_complete

logger = logging.getLogger(__name__)

#: File endings read by :func:`read_image`, in any letter case (a folder is read as a DICOM series).
SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: SimpleITK's reader for each ending (given explicitly: ITK picks none for '.MHA' or '.MHD').
_IMAGE_IOS = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".nrrd": "NrrdImageIO",
              ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}
#: Integer dtypes kept as read: each value is exactly representable in float32.
COMPACT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16))
_EXPECTED = "a 3D NIfTI (.nii/.nii.gz), NRRD (.nrrd) or MetaImage (.mha/.mhd) file, or a DICOM series folder"


def image_ending(path: Path) -> str | None:
    """The supported ending of ``path``'s name in lower case (e.g. '.nii.gz' for 'CT.NII.GZ'), or None.

    The name keeps its own letter case: ``path.name[:-len(ending)]`` is its stem.
    """
    name = Path(path).name.lower()
    return next((ending for ending in SUPPORTED_ENDINGS if name.endswith(ending)), None)


def read_image(paths: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
    """Read one case: each path is one channel, in order.

    Returns the image as a (C, Z, Y, X) array and the geometry shared by all channels. Its dtype is
    the files' own when every channel has the same 8- or 16-bit integer type, float32 otherwise.
    Raises InputImageError (one line naming the file) when a channel cannot be read, is not a scalar
    3D image, or does not share the first channel's geometry.
    """
    paths = [p if isinstance(p, DicomSeries) else Path(p) for p in paths]
    if not paths:
        raise InputImageError(f"no image given; expected one path per channel ({_EXPECTED})")
    first = read_channel(paths[0])
    geometry = Geometry.from_sitk(first)
    images = [first]
    for path in paths[1:]:
        image = read_channel(path)
        _check_same_geometry(Geometry.from_sitk(image), geometry, path, paths[0])
        images.append(image)
    dtypes = {sitk.GetArrayViewFromImage(image).dtype for image in images}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.float32
    if dtype not in COMPACT_DTYPES:
        dtype = np.float32
    data = np.empty((len(paths), *geometry.shape), dtype=dtype)
    for index, image in enumerate(images):
        data[index] = sitk.GetArrayViewFromImage(image)
    logger.debug("read %d channel(s): %s", len(paths), geometry.describe())
    return data, geometry


def read_channel(path: "Path | DicomSeries") -> sitk.Image:
    """Read one channel (an image file, a folder holding one DICOM series, or a :class:`DicomSeries`)
    as a scalar 3D image."""
    if isinstance(path, DicomSeries):
        image = read_dicom_files(path)
        _check_scalar_3d(image, Path(path.name))
        return image
    path = Path(path)
    if path.is_dir():
        image = read_dicom_series(path)
    else:
        image = _read_file(path)
    _check_scalar_3d(image, path)
    return image


def _read_file(path: Path) -> sitk.Image:
    if not path.is_file():
        raise InputImageError(f"image {path} does not exist; expected {_EXPECTED}")
    ending = image_ending(path)
    if ending is None:
        raise InputImageError(f"cannot read {path}: unsupported file type; expected {_EXPECTED}")
    if ending in (".nii", ".nii.gz"):
        check_nifti_complete(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_IMAGE_IOS[ending])
    try:
        return reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1].removeprefix("sitk::ERROR: ")
        raise InputImageError(f"cannot read {path} ({reason}); expected {_EXPECTED}") from None


def _check_scalar_3d(image: sitk.Image, path: Path) -> None:
    components = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() != 3 or components != 1:
        size = "x".join(str(s) for s in image.GetSize())
        raise InputImageError(
            f"{path} is a {image.GetDimension()}D image of size {size} with {components} value(s) per voxel; "
            "expected a 3D image with one value per voxel (give each channel as its own file)"
        )


def _check_same_geometry(geometry: Geometry, reference: Geometry, path: Path, reference_path: Path) -> None:
    if geometry.matches(reference):
        return
    differing = [
        f"{name} {getattr(geometry, name)} vs {getattr(reference, name)}"
        for name in ("shape", "spacing", "origin", "direction")
        if not reference.matches(replace(reference, **{name: getattr(geometry, name)}))
    ]
    raise InputImageError(
        f"channel {path} does not share the geometry of the first channel {reference_path} "
        f"({'; '.join(differing)}); expected all channels of a case on one voxel grid (resample them first)"
    )
