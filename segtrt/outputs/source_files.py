"""The instance files of a DICOM series folder, for the DICOM outputs' ``dicom_files`` (no pydicom needed)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from segtrt.errors import OutputError
from segtrt.io.dicom import list_dicom_series


def series_files(folder: Path, series_uid: str | None = None) -> tuple[Path, ...]:
    """The instance files of the DICOM series in ``folder`` (the one ``series_uid`` names, or its only one),
    as SimpleITK's series reader finds them; other files in the folder are left out."""
    uids = list_dicom_series(Path(folder))
    if series_uid is None and len(uids) != 1:
        raise OutputError(f"{folder} holds {len(uids)} DICOM series; expected one, or its Series Instance UID")
    uid = uids[0] if series_uid is None else series_uid
    return tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
