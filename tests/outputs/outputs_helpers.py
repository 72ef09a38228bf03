"""Helpers of the output tests: paths of the real data, the model description, required tools.

Third-party tools the tests run (dcmqi's segimage2itkimage, dciodvfy, chromium) are required: a missing
one fails the test with the install command, it never skips.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from segtrt.io import Geometry
from segtrt.outputs import ModelDescription

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


def require_tool(name: str, install: str, candidates: tuple[Path, ...] = (), search_path: bool = True) -> str:
    """Path of executable ``name``: the first of ``candidates`` that exists, else (when ``search_path``)
    the one on PATH; fails the test loudly with the install command when there is none."""
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name) if search_path else None
    if found is None:
        pytest.fail(f"{name} is required by this test and is not installed; install it with: {install}")
    return found


DEBIAN_DCIODVFY = (Path("/usr/bin/dciodvfy"),)


def venv_tool(name: str) -> tuple[Path, ...]:
    """The executable ``name`` installed next to this Python (pip packages' scripts)."""
    return (Path(sys.executable).parent / name,)
