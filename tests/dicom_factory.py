"""Real-looking DICOM series for tests, made from the bundled real CT series (sample_data/example_ct_dicom).

Each written series is a copy of the real slices with new UIDs and the attributes a test asks for
(modality, description, number, image type), optionally downsampled in-plane so that predictions on
it are quick. UIDs are derived deterministically from the names given.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
REAL_SERIES = SAMPLE / "example_ct_dicom"


def uid(name: str) -> str:
    return generate_uid(entropy_srcs=[name])


def real_slices() -> list[pydicom.Dataset]:
    """The real series' slices in file-name order (not position order)."""
    return [pydicom.dcmread(path) for path in sorted(REAL_SERIES.iterdir())]


def write_series(
    folder: Path, name: str, *, study: str = "study", slices: range | None = None, modality: str = "CT",
    description: str = "CT Body 3.0", number: int = 2, image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    shrink: int = 8, prefix: str = "IM", patient: str = "patient",
) -> list[Path]:
    """Write the real slices ``slices`` (default all 20) as series ``name`` into ``folder``; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    datasets = real_slices()
    chosen = range(len(datasets)) if slices is None else slices
    paths = []
    for position, index in enumerate(chosen):
        ds = copy.deepcopy(datasets[index])  # a slice may be written twice (duplicates)
        _shrink(ds, shrink)  # also decompresses: edited pixel data are written uncompressed
        ds.StudyInstanceUID = uid(f"{patient}/{study}")
        ds.SeriesInstanceUID = uid(f"{patient}/{study}/{name}")
        ds.SOPInstanceUID = uid(f"{patient}/{study}/{name}/{position}/{index}")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = pydicom.uid.CTImageStorage
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.PatientID, ds.PatientName = patient, patient
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, description, number
        ds.ImageType = list(image_type)
        path = folder / f"{prefix}{position:04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _shrink(ds: pydicom.Dataset, factor: int) -> None:
    """Decode the (JPEG 2000) pixels, keep every ``factor``-th row and column, store them uncompressed."""
    pixels = ds.pixel_array[::factor, ::factor].copy() if factor > 1 else ds.pixel_array.copy()
    ds.PixelData = pixels.tobytes()
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [float(v) * factor for v in ds.PixelSpacing]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian


def series_array(folder: Path) -> np.ndarray:
    """The series in ``folder`` as SimpleITK reads it (for comparisons)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def write_dicomdir(path: Path) -> Path:
    """A minimal DICOMDIR (Media Storage Directory) with an empty record sequence."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = uid(str(path))
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "EXPORT"
    ds.DirectoryRecordSequence = Sequence([])
    ds.save_as(path, enforce_file_format=True)
    return path
