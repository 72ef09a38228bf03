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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from segtrt.errors import InputImageError
from segtrt.io.dicom import DicomSeries, read_dicom_files, read_dicom_series
from segtrt.io.geometry import Geometry
from segtrt.io.integrity import NonFiniteVoxels, check_nifti_intact, nifti_layout

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
    first, restore = _read_channel_values(paths[0])
    geometry = Geometry.from_sitk(first)
    images, restores = [first], [restore]
    for path in paths[1:]:
        image, restore = _read_channel_values(path)
        _check_same_geometry(Geometry.from_sitk(image), geometry, path, paths[0])
        images.append(image)
        restores.append(restore)
    dtypes = {sitk.GetArrayViewFromImage(image).dtype for image in images}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.float32
    if dtype not in COMPACT_DTYPES:
        dtype = np.float32
    data = np.empty((len(paths), *geometry.shape), dtype=dtype)
    for index, (image, restore) in enumerate(zip(images, restores)):
        data[index] = sitk.GetArrayViewFromImage(image)
        if restore is not None:  # ITK's NIfTI reader zeroed them; the file holds them
            data[index].reshape(-1)[restore.indices] = restore.values
    logger.debug("read %d channel(s): %s", len(paths), geometry.describe())
    return data, geometry


def read_channel(path: "Path | DicomSeries") -> sitk.Image:
    """Read one channel (an image file, a folder holding one DICOM series, or a :class:`DicomSeries`)
    as a scalar 3D image.

    As SimpleITK gives it: NaN/Inf voxels of a NIfTI file are 0 in it (see segtrt.io.integrity);
    :func:`read_image` puts them back.
    """
    return _read_channel_values(path)[0]


def _read_channel_values(path: "Path | DicomSeries") -> tuple[sitk.Image, NonFiniteVoxels | None]:
    """The channel's image and, for a floating-point NIfTI, the non-finite voxels ITK zeroed."""
    if isinstance(path, DicomSeries):
        image = read_dicom_files(path)
        _check_scalar_3d(image, Path(path.name))
        return image, None
    path = Path(path)
    if path.is_dir():
        image, restore = read_dicom_series(path), None
    else:
        image, restore = _read_file(path)
    _check_scalar_3d(image, path)
    return image, restore


def _read_file(path: Path) -> tuple[sitk.Image, NonFiniteVoxels | None]:
    if not path.is_file():
        raise InputImageError(f"image {path} does not exist; expected {_EXPECTED}")
    ending = image_ending(path)
    if ending is None:
        raise InputImageError(f"cannot read {path}: unsupported file type; expected {_EXPECTED}")
    if ending == ".nii":
        restore = check_nifti_intact(path)
        return _sitk_read(path, ending), restore
    if ending != ".nii.gz":
        return _sitk_read(path, ending), None
    nifti_layout(path)  # a malformed header or an empty axis: say so before ITK does
    # the CRC/length check decompresses the whole stream; zlib and ITK both release the GIL, so the check
    # runs beside the read and costs no wall time where a second core is free
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segtrt-gzip-check") as pool:
        check = pool.submit(check_nifti_intact, path)
        try:
            image = _sitk_read(path, ending)
        finally:
            restore = check.result()  # a damaged file is reported as damaged even when ITK failed on it too
    return image, restore


def _sitk_read(path: Path, ending: str) -> sitk.Image:
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
    if "complex" in image.GetPixelIDTypeAsString():
        raise InputImageError(
            f"{path} holds complex values ({image.GetPixelIDTypeAsString()}); expected real intensities "
            "(save the magnitude image)"
        )
    if image.GetDimension() != 3 or components != 1:
        size = "x".join(str(s) for s in image.GetSize())
        raise InputImageError(
            f"{path} is a {image.GetDimension()}D image of size {size} with {components} value(s) per voxel; "
            "expected a 3D image with one value per voxel (give each channel as its own file)"
        )
    if 0 in image.GetSize():
        size = "x".join(str(s) for s in image.GetSize())
        raise InputImageError(f"{path} has an axis without voxels (size {size}); expected at least one voxel per axis")


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
