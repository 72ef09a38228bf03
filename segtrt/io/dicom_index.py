"""Index DICOM files by series: read each file's header (never its pixels) and group the files.

A PACS export or a scanner's media holds files of many series spread over folders; one folder may hold
several series and one series may span folders. Files are grouped by Series Instance UID wherever they
sit. Anonymised exports sometimes blank that UID; such files are grouped per folder (and Frame of
Reference), which is how a person would read them.

Only headers are read (pydicom, ``stop_before_pixels``); pixel data are read later by SimpleITK when the
series is predicted (:func:`segtrt.io.dicom.read_dicom_files`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pydicom
from pydicom.errors import InvalidDicomError

logger = logging.getLogger(__name__)

#: Tags read from each file: enough to group, describe and check a series.
HEADER_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesInstanceUID", "StudyInstanceUID", "SeriesNumber",
    "SeriesDescription", "StudyDescription", "PatientID", "FrameOfReferenceUID", "ImageType", "Rows",
    "Columns", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "NumberOfFrames",
    "DirectoryRecordSequence",
)


@dataclass(frozen=True)
class DicomHeader:
    """What segtrt needs of one DICOM file's header (values as strings/tuples, '' when absent)."""

    path: Path
    series_uid: str
    study_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    modality: str
    series_number: str
    series_description: str
    patient_id: str
    frame_of_reference: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    orientation: tuple[float, ...]
    position: tuple[float, ...]
    frames: int
    is_directory: bool


@dataclass
class DicomSeriesGroup:
    """The files of one series as found on disk, sorted by path; ``key`` identifies the group."""

    key: str
    series_uid: str
    headers: list[DicomHeader] = field(default_factory=list)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(h.path for h in self.headers)

    @property
    def first(self) -> DicomHeader:
        return self.headers[0]

    @property
    def folders(self) -> tuple[Path, ...]:
        return tuple(sorted({h.path.parent for h in self.headers}))


def looks_like_dicom(path: Path) -> bool:
    """True when ``path`` starts with a DICOM preamble ('DICM' at byte 128) or ends in .dcm (any case)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_header(path: Path) -> DicomHeader:
    """The header of one DICOM file. Raises InvalidDicomError / OSError for files that are not DICOM."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    return DicomHeader(
        path=path,
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        modality=_text(ds, "Modality").upper(),
        series_number=_text(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        patient_id=_text(ds, "PatientID"),
        frame_of_reference=_text(ds, "FrameOfReferenceUID"),
        image_type=tuple(str(v).upper() for v in _values(ds, "ImageType")),
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
        orientation=tuple(float(v) for v in _values(ds, "ImageOrientationPatient")),
        position=tuple(float(v) for v in _values(ds, "ImagePositionPatient")),
        frames=int(ds.get("NumberOfFrames") or 1),
        is_directory="DirectoryRecordSequence" in ds or path.name.upper() == "DICOMDIR",
    )


def index_dicom_files(paths: Iterable[Path]) -> tuple[list[DicomSeriesGroup], list[tuple[Path, str]]]:
    """Group DICOM files into series. Returns the groups (sorted by key) and the files that could not be
    read as DICOM, each with the reason."""
    groups: dict[str, DicomSeriesGroup] = {}
    unreadable: list[tuple[Path, str]] = []
    for path in sorted(paths):
        try:
            header = read_header(path)
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError) as error:
            unreadable.append((path, f"not a readable DICOM file ({_one_line(error)})"))
            continue
        key = group_key(header)
        group = groups.get(key)
        if group is None:
            group = groups[key] = DicomSeriesGroup(key, header.series_uid)
        group.headers.append(header)
    return [groups[key] for key in sorted(groups)], unreadable


def group_key(header: DicomHeader) -> str:
    """Series Instance UID; for files whose UID is blank, their folder and Frame of Reference."""
    if header.series_uid:
        return header.series_uid
    return f"{header.path.parent}|{header.frame_of_reference}|{header.series_description}"


def describe_group(group: DicomSeriesGroup) -> str:
    """'CT series 3 "Abdomen 1.0" (120 files)' for messages and reports."""
    first = group.first
    number = f" {first.series_number}" if first.series_number else ""
    description = f' "{first.series_description}"' if first.series_description else ""
    return f"{first.modality or 'DICOM'} series{number}{description} ({len(group.headers)} files)"


def files_by_folder(groups: Sequence[DicomSeriesGroup]) -> dict[Path, set[str]]:
    """Folder -> keys of the groups with a file in it (to tell whether a folder holds one series)."""
    folders: dict[Path, set[str]] = defaultdict(set)
    for group in groups:
        for folder in group.folders:
            folders[folder].add(group.key)
    return folders


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _values(ds: pydicom.Dataset, keyword: str) -> list:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        return list(value)
    return [value]


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
