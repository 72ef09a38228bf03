"""write_case_outputs: which files, and DICOM outputs refused before anything is written."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from outputs_helpers import MODEL

from segtrt.errors import OutputError
from segtrt.outputs import OutputOptions, write_case_outputs


def test_every_requested_file_is_written(written_case):
    outputs, stem = written_case
    assert set(outputs.files) == {"legend", "itksnap", "slicer", "dicom-seg", "rtstruct", "statistics", "preview"}
    assert all(path.is_file() and path.parent == stem.parent for path in outputs.files.values())
    assert not list(stem.parent.glob(".*"))  # no temporary files left
    assert outputs.warnings == ["derived missing DICOM UIDs: StudyInstanceUID, SeriesInstanceUID"]


def test_nifti_only_writes_just_the_legend(sample_case, tmp_path):
    outputs = write_case_outputs(tmp_path / "ct", sample_case.labels, sample_case.image, sample_case.geometry,
                                 sample_case.label_names, OutputOptions(), MODEL)
    assert set(outputs.files) == {"legend", "itksnap", "slicer"} and outputs.statistics is None


@pytest.mark.parametrize("problem", ["no files", "blank uids", "wrong series", "missing slice"])
def test_dicom_outputs_are_refused_before_writing(sample_case, tmp_path, problem):
    files = list(sample_case.dicom_files)
    labels, derive = sample_case.labels, problem != "blank uids"
    if problem == "no files":
        files = None
    elif problem == "wrong series":
        copy = tmp_path / "shifted"
        copy.mkdir()
        for path in files:
            dataset = pydicom.dcmread(path)
            dataset.ImagePositionPatient = [float(v) + (0, 0, 7.0)[i] for i, v in enumerate(dataset.ImagePositionPatient)]
            dataset.save_as(copy / path.name)
        files = sorted(copy.iterdir())
    elif problem == "missing slice":
        files = files[:-1]
    out = tmp_path / "out"
    with pytest.raises(OutputError) as error:
        write_case_outputs(out / "ct", labels, sample_case.image, sample_case.geometry, sample_case.label_names,
                           OutputOptions(formats=("nifti", "dicom-seg"), derive_missing_uids=derive), MODEL,
                           dicom_files=files)
    assert "\n" not in str(error.value)
    assert not out.exists()


def test_source_with_complete_uids_is_referenced_as_is(sample_case, tmp_path):
    source = tmp_path / "series"
    source.mkdir()
    for path in sample_case.dicom_files:
        shutil.copy(path, source / path.name)
        dataset = pydicom.dcmread(source / path.name)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = "1.2.3.4", "1.2.3.5"
        dataset.save_as(source / path.name)
    options = OutputOptions(formats=("dicom-seg", "rtstruct"))
    outputs = write_case_outputs(tmp_path / "ct", sample_case.labels, sample_case.image, sample_case.geometry,
                                 sample_case.label_names, options, MODEL, dicom_files=sorted(source.iterdir()))
    assert outputs.warnings == []
    seg, rtstruct = (pydicom.dcmread(outputs.files[k]) for k in ("dicom-seg", "rtstruct"))
    assert seg.StudyInstanceUID == rtstruct.StudyInstanceUID == "1.2.3.4"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.5"
    assert rtstruct.SeriesNumber == seg.SeriesNumber + 1
    assert np.unique(sample_case.labels).size > 1


def test_an_empty_label_map_gets_a_seg_and_no_rtstruct(sample_case, tmp_path):
    labels = np.zeros_like(sample_case.labels)
    options = OutputOptions(formats=("dicom-seg", "rtstruct"), derive_missing_uids=True, preview=True)
    outputs = write_case_outputs(tmp_path / "ct", labels, sample_case.image, sample_case.geometry,
                                 sample_case.label_names, options, MODEL, dicom_files=sample_case.dicom_files)
    assert set(outputs.files) == {"dicom-seg", "preview"} and not (tmp_path / "ct.rtstruct.dcm").exists()
    assert any(w.startswith("RTSTRUCT not written") for w in outputs.warnings)
