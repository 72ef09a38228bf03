"""DICOM series reading: a real CT series against TotalSegmentator's NIfTI of it; tiny synthetic series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from numpy.testing import assert_allclose, assert_array_equal

from segtrt.errors import InputImageError
from segtrt.io import Geometry, is_dicom_series_folder, list_dicom_series, read_dicom_series, read_image

#: Real CT data bundled in the repository (attribution: sample_data/SOURCE.md).
DATA = Path(__file__).resolve().parents[2] / "sample_data"

_TILT = 0.2  # rad: slices tilted about the x axis (an oblique acquisition)
_ROW = np.array([1.0, 0.0, 0.0])
_COLUMN = np.array([0.0, np.cos(_TILT), -np.sin(_TILT)])
_NORMAL = np.cross(_ROW, _COLUMN)
_FIRST_POSITION = np.array([10.0, -20.0, 30.0])
_PIXEL_SPACING = (0.9, 0.8)  # DICOM order: between rows (y), between columns (x)
_SLICE_GAP = 2.0



def slice_values(slice_index: int, offset: int = 0) -> np.ndarray:
    return (np.arange(5 * 6, dtype=np.int16).reshape(5, 6) + 100 * slice_index + offset).astype(np.int16)


def write_series(folder: Path, uid: str, positions=(0, 1, 2, 3), offset: int = 0) -> Path:
    """Write one oblique series; file names sort in the REVERSE order of the slice positions."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in positions:
        position = _FIRST_POSITION + k * _SLICE_GAP * _NORMAL
        image = sitk.GetImageFromArray(slice_values(k, offset)[None])
        # The DICOM writer takes spacing, position and orientation from the image, not from the tags.
        image.SetSpacing((_PIXEL_SPACING[1], _PIXEL_SPACING[0], _SLICE_GAP))
        image.SetOrigin(tuple(position))
        image.SetDirection(tuple(np.stack([_ROW, _COLUMN, _NORMAL], axis=1).ravel()))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 1}", "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.9", "0020|000e": uid, "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*_ROW, *_COLUMN)),
            "0028|0030": "\\".join(str(v) for v in _PIXEL_SPACING),
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}_slice{99 - k:02d}.dcm"))
        writer.Execute(image)
    return folder


def test_real_series_geometry_matches_totalsegmentator_nifti() -> None:
    image = read_dicom_series(DATA / "example_ct_dicom")
    dicom = Geometry.from_sitk(image)
    # TotalSegmentator's NIfTI of this series is the same voxel grid stored in LAS order: y is flipped.
    seg = Geometry.from_sitk(sitk.ReadImage(str(DATA / "example_seg_dicom.nii.gz")))
    assert dicom.shape == seg.shape == (20, 512, 512)
    assert dicom.spacing == seg.spacing == (2.0, 0.9765625, 0.9765625)
    flip_y = np.diag([1.0, -1.0, 1.0])
    dicom_direction = np.reshape(dicom.direction, (3, 3))
    assert_allclose(np.reshape(seg.direction, (3, 3)), dicom_direction @ flip_y, atol=1e-12)
    last_row = dicom.lps_affine() @ np.array([0.0, dicom.shape[1] - 1, 0.0, 1.0])
    # Measured difference 0.0: every value involved is a binary fraction.
    assert_allclose(seg.origin, last_row[:3], rtol=0, atol=1e-9)
    assert image.GetPixelID() == sitk.sitkInt16 and sitk.GetArrayViewFromImage(image).min() <= -1000  # HU


def test_real_series_through_read_image() -> None:
    assert list_dicom_series(DATA / "example_ct_dicom") == ("",)  # anonymized: empty Series UID
    data, geometry = read_image([DATA / "example_ct_dicom"])
    # The series stores HU as 16-bit integers; read_image keeps them compact (cast on the device).
    assert data.shape == (1, 20, 512, 512) and data.dtype == np.int16
    assert data.min() <= -1000
    assert geometry.spacing == (2.0, 0.9765625, 0.9765625)


def test_synthetic_oblique_series_sorted_by_position(tmp_path: Path) -> None:
    folder = write_series(tmp_path / "series", "1.2.826.0.1.1")
    data, geometry = read_image([folder])
    assert_array_equal(data[0], np.stack([slice_values(k) for k in range(4)]))
    assert_allclose(geometry.spacing, (_SLICE_GAP, *_PIXEL_SPACING), rtol=1e-6)
    assert_allclose(geometry.origin, _FIRST_POSITION, atol=1e-6)
    expected_direction = np.stack([_ROW, _COLUMN, _NORMAL], axis=1)
    assert_allclose(np.reshape(geometry.direction, (3, 3)), expected_direction, atol=1e-6)


def test_several_series_need_a_choice(tmp_path: Path) -> None:
    folder = write_series(tmp_path / "mixed", "1.2.826.0.1.1")
    write_series(folder, "1.2.826.0.1.2", offset=1000)
    expected = r"2 DICOM series \('1\.2\.826\.0\.1\.1', '1\.2\.826\.0\.1\.2'\)"
    with pytest.raises(InputImageError, match=expected):
        read_dicom_series(folder)
    chosen = read_dicom_series(folder, series_uid="1.2.826.0.1.2")
    assert_array_equal(sitk.GetArrayFromImage(chosen)[:, 0, 0], [1000, 1100, 1200, 1300])
    with pytest.raises(InputImageError, match=r"'9\.9' is not in .* it holds: '1\.2\.826\.0\.1\.1'"):
        read_dicom_series(folder, series_uid="9.9")


def test_non_dicom_files_are_ignored(tmp_path: Path) -> None:
    folder = write_series(tmp_path / "series", "1.2.826.0.1.1")
    (folder / "README.txt").write_text("notes from the scanner export")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16)), str(folder / "other.nii.gz"))
    image = read_dicom_series(folder)
    assert image.GetSize() == (6, 5, 4)


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert not is_dicom_series_folder(tmp_path / "empty")
    with pytest.raises(InputImageError, match="no DICOM series found in"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(InputImageError, match="is not a folder"):
        read_dicom_series(tmp_path / "absent")


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    folder = write_series(tmp_path / "gap", "1.2.826.0.1.1", positions=(0, 1, 3, 4))
    with pytest.raises(InputImageError, match="missing slices or uneven slice spacing"):
        read_dicom_series(folder)


def test_duplicate_slices_are_called_duplicates(tmp_path: Path) -> None:
    folder = write_series(tmp_path / "dup", "1.2.826.0.1.2")
    (folder / "copy_of_slice.dcm").write_bytes((folder / "1.2.826.0.1.2_slice98.dcm").read_bytes())
    with pytest.raises(InputImageError, match=r"has 1 duplicate slice position\(s\)"):
        read_dicom_series(folder)
