"""The source DICOM series of a label map: headers read, checked against the label grid and put in its order.

Label maps come from SimpleITK's series reader, whose slice order is the position along the slice normal
(GDCM sorts by Image Position (Patient) projected on the normal). Slice ``k`` of the (Z, Y, X) label map
is therefore the source instance whose Image Position (Patient), projected on the geometry's third
direction column, is the k-th smallest; this module sorts the instances so, then checks that every
instance lies where the geometry says slice ``k`` lies (and has its rows, columns and orientation),
so that a label map on another grid is refused rather than written against the wrong images.

Headers only are read (no pixel data) and the files are never modified. SOP Instance / SOP Class UIDs
missing from the data set are taken from the file meta information, which by definition holds the same
values. Blanked Study / Series Instance UIDs or Frame of Reference UID (anonymised data) are refused
unless ``derive_missing_uids`` is set: then stable UIDs are derived from the instances' SOP Instance
UIDs (logged, and returned in ``SourceSeries.derived``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from segtrt.errors import OutputError
from segtrt.io.geometry import Geometry

logger = logging.getLogger(__name__)

#: An instance may lie this fraction of the slice spacing away from where the geometry puts its slice.
POSITION_TOLERANCE = 0.1
#: Direction cosines of Image Orientation (Patient) and the geometry agree within this.
ORIENTATION_TOLERANCE = 1e-4
_SHARED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


@dataclass(frozen=True)
class SourceSeries:
    """The source instances (headers), in label-map slice order, with their UIDs complete.

    datasets: one pydicom Dataset per label slice (index k = label map slice k).
    files: the file of each dataset, same order.
    derived: names of the attributes whose values were derived (empty unless derive_missing_uids).
    """

    datasets: tuple[Dataset, ...]
    files: tuple[Path, ...]
    derived: tuple[str, ...]


def read_source_series(files: Sequence[Path], geometry: Geometry, derive_missing_uids: bool = False) -> SourceSeries:
    """Read, complete, sort and check the instance files of the series the labels were made from."""
    pairs = [(Path(f), _read_header(Path(f))) for f in files]
    if len(pairs) != geometry.shape[0]:
        raise OutputError(f"the DICOM series has {len(pairs)} instance files but the label map has "
                          f"{geometry.shape[0]} slices; expected one single-frame instance per slice")
    for path, dataset in pairs:
        _complete_instance_uids(dataset, path)
    derived = _complete_series_uids([d for _, d in pairs], derive_missing_uids)
    normal = np.reshape(geometry.direction, (3, 3))[:, 2]
    pairs.sort(key=lambda pair: float(np.dot(_position(pair[1], pair[0]), normal)))
    for index, (path, dataset) in enumerate(pairs):
        _check_instance(dataset, path, index, geometry)
    return SourceSeries(tuple(d for _, d in pairs), tuple(p for p, _ in pairs), derived)


def _read_header(path: Path) -> Dataset:
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise OutputError(f"cannot read DICOM source file {path} ({error}); expected a DICOM image file") from None
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        raise OutputError(f"DICOM source file {path} is a multi-frame image; DICOM outputs support "
                          "series of single-frame images (one file per slice)")
    return dataset


def _complete_instance_uids(dataset: Dataset, path: Path) -> None:
    """Fill empty SOP Instance / SOP Class UIDs from the file meta information (same values by definition)."""
    meta = getattr(dataset, "file_meta", Dataset())
    for attribute, meta_attribute in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                      ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not str(dataset.get(attribute, "") or ""):
            value = str(meta.get(meta_attribute, "") or "")
            if not value:
                raise OutputError(f"DICOM source file {path} has no {attribute}; "
                                  "expected an image instance with its UIDs")
            setattr(dataset, attribute, value)
            logger.debug("%s: %s taken from the file meta information", path, attribute)


def _complete_series_uids(datasets: list[Dataset], derive: bool) -> tuple[str, ...]:
    """Check the series-level UIDs are shared and present; derive blank ones when allowed."""
    derived = []
    instance_uids = sorted(str(d.SOPInstanceUID) for d in datasets)
    for attribute in _SHARED_UIDS:
        values = {str(d.get(attribute, "") or "") for d in datasets}
        if len(values) > 1:
            raise OutputError(f"the DICOM source files hold {len(values)} different {attribute} values; "
                              "expected the instances of one series")
        if values != {""}:
            continue
        if not derive:
            raise OutputError(f"the DICOM source series has an empty {attribute} (anonymised data?); DICOM "
                              "outputs must reference it: pass --derive-missing-uids to derive stable UIDs")
        value = generate_uid(entropy_srcs=[attribute, *instance_uids])
        for dataset in datasets:
            setattr(dataset, attribute, value)
        derived.append(attribute)
        logger.warning("DICOM source series has no %s; derived %s from its SOP Instance UIDs", attribute, value)
    return tuple(derived)


def _position(dataset: Dataset, path: Path) -> np.ndarray:
    if "ImagePositionPatient" not in dataset or "ImageOrientationPatient" not in dataset:
        raise OutputError(f"DICOM source file {path} has no Image Position/Orientation (Patient); "
                          "expected a cross-sectional image")
    return np.asarray([float(v) for v in dataset.ImagePositionPatient])


def _check_instance(dataset: Dataset, path: Path, index: int, geometry: Geometry) -> None:
    """Refuse an instance whose size, orientation or position is not that of label slice ``index``."""
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if (rows, columns) != geometry.shape[1:]:
        raise OutputError(f"DICOM source file {path} is {rows}x{columns} but the label map's slices are "
                          f"{geometry.shape[1]}x{geometry.shape[2]}; expected the series the labels were made from")
    direction = np.reshape(geometry.direction, (3, 3))
    orientation = np.asarray([float(v) for v in dataset.ImageOrientationPatient])
    if not np.allclose(orientation, np.concatenate([direction[:, 0], direction[:, 1]]),
                       atol=ORIENTATION_TOLERANCE):
        raise OutputError(f"DICOM source file {path} has orientation {orientation.tolist()}, not the label "
                          "map's; expected the series the labels were made from")
    expected = np.asarray(geometry.origin) + index * geometry.spacing[0] * direction[:, 2]
    offset = float(np.linalg.norm(_position(dataset, path) - expected))
    if offset > POSITION_TOLERANCE * geometry.spacing[0]:
        raise OutputError(f"DICOM source file {path} lies {offset:.3g} mm from label slice {index}; "
                          "expected the series the labels were made from")
