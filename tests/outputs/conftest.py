"""Real data for the output tests: the sample CT DICOM series and the bundled model's labels of it."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk
from outputs_helpers import DATA, MODEL, REPO, SERIES, SampleCase

from segtrt.io import read_image
from segtrt.outputs import OutputOptions, label_names_from_dataset, write_case_outputs


@pytest.fixture(scope="session")
def sample_case() -> SampleCase:
    image, geometry = read_image([SERIES])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "example_ct_dicom_model_labels.nii.gz")))
    names = label_names_from_dataset(json.loads((REPO / "sample_data" / "model" / "dataset.json").read_text()))
    files = tuple(sorted(p for p in SERIES.iterdir() if p.is_file()))
    return SampleCase(image, geometry, labels, names, files)


@pytest.fixture(scope="session")
def written_case(sample_case: SampleCase, tmp_path_factory: pytest.TempPathFactory):
    """All outputs of the sample case (labelmap SEG), written once: (CaseOutputs, stem)."""
    stem = tmp_path_factory.mktemp("case") / "patient1" / "ct"
    options = OutputOptions(formats=("nifti", "dicom-seg", "rtstruct"), statistics=True, preview=True,
                            label_codes=DATA / "label_codes.json", derive_missing_uids=True)
    outputs = write_case_outputs(stem, sample_case.labels, sample_case.image, sample_case.geometry,
                                 sample_case.label_names, options, MODEL, dicom_files=sample_case.dicom_files,
                                 case_id="patient1")
    return outputs, stem
