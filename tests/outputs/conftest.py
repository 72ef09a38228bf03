"""Real data for the output tests: the sample CT DICOM series and the bundled model's labels of it.

Third-party tools the tests run (dcmqi's segimage2itkimage, dciodvfy, chromium) are required: a missing
one fails the test with the install command, it never skips.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segtrt.io import Geometry, read_image
from segtrt.outputs import ModelDescription, OutputOptions, label_names_from_dataset, write_case_outputs

REPO = Path(__file__).resolve().parents[2]
SERIES = REPO / "sample_data" / "example_ct_dicom"
DATA = REPO / "tests" / "data" / "outputs"
MODEL = ModelDescription(name="segtrt sample", identity="sha256-0123456789ab", configuration="3d_fullres",
                         folds=("0",), version="0.1.0")


@dataclass(frozen=True)
class SampleCase:
    image: np.ndarray  # (1, Z, Y, X) HU
    geometry: Geometry
    labels: np.ndarray  # (Z, Y, X) uint8
    label_names: dict[int, str]
    dicom_files: tuple[Path, ...]


def require_tool(name: str, install: str, candidates: tuple[Path, ...] = ()) -> str:
    """Path of executable ``name`` (first of ``candidates`` that exists, else PATH); fails loudly when absent."""
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is required by this test and is not installed; install it with: {install}")
    return found


def venv_tool(name: str) -> tuple[Path, ...]:
    """The executable ``name`` installed next to this Python (pip packages' scripts)."""
    return (Path(sys.executable).parent / name,)


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
