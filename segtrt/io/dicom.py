"""Read one DICOM series from a folder as a 3D SimpleITK image.

Slices are found and sorted by SimpleITK's GDCM series reader (by position along the slice normal,
not by file name); files that are not DICOM are ignored. The folder is not searched recursively.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segtrt.errors import InputImageError

logger = logging.getLogger(__name__)

#: A slice gap deviating from the mean slice spacing by more than this fraction of it (a missing slice
#: gives 0.33 or more) is refused; smaller deviations (rounded positions) are only logged.
MAX_SLICE_SPACING_DEVIATION = 0.1

_POSITION_TAG = "0020|0032"  # Image Position (Patient)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series given by its files (in slice order), wherever they sit on disk.

    ``name`` says where it came from, for messages (e.g. 'P1/ST1/SE2 (CT series 2)').
    """

    series_uid: str
    files: tuple[Path, ...]
    name: str

    def __str__(self) -> str:
        return self.name


def read_dicom_files(series: DicomSeries) -> sitk.Image:
    """Read ``series.files`` (already in slice order) as one 3D image; same checks as :func:`read_dicom_series`."""
    if not series.files:
        raise InputImageError(f"DICOM series {series} has no files; expected the slice files of one series")
    return _read_slices([str(f) for f in series.files], str(series), series.name)


def list_dicom_series(folder: Path) -> tuple[str, ...]:
    """Series Instance UIDs of the DICOM series directly inside ``folder`` (anonymized data may give '')."""
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def is_dicom_series_folder(folder: Path) -> bool:
    """True when ``folder`` directly holds the files of at least one DICOM series.

    ITK's "No Series were found" warning is muted while probing (it is an expected answer here); the
    process-wide warning setting is restored afterwards.
    """
    if not Path(folder).is_dir():
        return False
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return len(list_dicom_series(folder)) > 0
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read the DICOM series in ``folder`` (one series, or the one ``series_uid`` names) as a 3D image.

    The image keeps the pixel values after the rescale slope/intercept (HU for CT) and SimpleITK's
    geometry (spacing from the slice positions). Raises InputImageError when the folder holds no series,
    several series and no ``series_uid``, a ``series_uid`` it does not hold, or unevenly spaced slices.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"DICOM input {folder} is not a folder; expected a folder of DICOM slice files")
    uid = _choose_series(folder, list_dicom_series(folder), series_uid)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    return _read_slices(list(files), f"{uid!r} in {folder}", folder)


def _read_slices(files: list[str], name: str, where: Path | str) -> sitk.Image:
    """The slice files (in order) as one 3D image, after the slice-spacing check; ``name`` and ``where``
    (the folder, or the series' description) for messages."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1]
        raise InputImageError(
            f"cannot read DICOM series {name} ({reason}); expected slices of one size and orientation"
        ) from None
    _check_slice_spacing(reader, image, where)
    logger.debug("read DICOM series %s: %d files, size %s", name, len(files), image.GetSize())
    return image


def _choose_series(folder: Path, uids: tuple[str, ...], series_uid: str | None) -> str:
    if not uids:
        raise InputImageError(
            f"no DICOM series found in {folder}; expected a folder holding the DICOM files of one series"
        )
    if series_uid is not None:
        if series_uid not in uids:
            raise InputImageError(
                f"DICOM series {series_uid!r} is not in {folder}; it holds: {', '.join(map(repr, uids))}"
            )
        return series_uid
    if len(uids) > 1:
        raise InputImageError(
            f"{folder} holds {len(uids)} DICOM series ({', '.join(map(repr, uids))}); "
            "choose one by its Series Instance UID or give each series its own folder"
        )
    return uids[0]


def _check_slice_spacing(reader: sitk.ImageSeriesReader, image: sitk.Image, folder: Path) -> None:
    """Refuse a series whose slice gaps (along the slice normal, from each slice's Image Position
    Patient) differ from the image's slice spacing by more than the allowed fraction of it."""
    gaps = _slice_gaps(reader, image)
    if gaps is None or gaps.size == 0:
        return
    spacing_z = image.GetSpacing()[2]
    normal = np.reshape(image.GetDirection(), (3, 3))[:, 2]
    heights = np.sort([float(np.dot([float(v) for v in reader.GetMetaData(i, _POSITION_TAG).split("\\")], normal))
                       for i in range(len(gaps) + 1)])  # _slice_gaps returned gaps, so every file has a position
    duplicates = int(np.count_nonzero(np.diff(heights) < 1e-3 * max(spacing_z, 1e-6)))
    if duplicates:
        raise InputImageError(
            f"DICOM series in {folder} has {duplicates} duplicate slice position(s) (two files at the same "
            "Image Position Patient: a file copied twice, or two series in one folder); expected one file per slice"
        )
    deviation = float(np.max(np.abs(gaps - spacing_z)))
    if deviation > MAX_SLICE_SPACING_DEVIATION * spacing_z:
        raise InputImageError(
            f"DICOM series in {folder} has missing slices or uneven slice spacing (a gap deviates by "
            f"{deviation:.3g} mm from the mean {spacing_z:.3g} mm); "
            "expected evenly spaced slices of one series"
        )
    if deviation > 1e-3 * spacing_z:
        logger.warning("DICOM series in %s: slice gaps deviate by up to %.3g mm from %.3g mm",
                       folder, deviation, spacing_z)


def _slice_gaps(reader: sitk.ImageSeriesReader, image: sitk.Image) -> np.ndarray | None:
    """Distances (mm) between consecutive slices along the slice normal; None without positions."""
    count = image.GetSize()[2]
    if count < 2 or len(reader.GetFileNames()) != count:  # one slice, or multi-frame files
        return None
    if not all(reader.HasMetaDataKey(i, _POSITION_TAG) for i in range(count)):
        return None
    positions = np.array([[float(v) for v in reader.GetMetaData(i, _POSITION_TAG).split("\\")]
                          for i in range(count)])
    normal = np.reshape(image.GetDirection(), (3, 3))[:, 2]
    return np.abs(np.diff(positions @ normal))
