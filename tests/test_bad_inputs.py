"""Every bad input gets one clear answer: one row per input, run through the CLI in process.

Each row is (what the user gives, exit code, what the one-line message must say). Settings and paths
are refused before any work (exit 2, ``segtrt: error: ...`` or a usage error); a bad image in a run is
that case's failure (exit 1, ``<case>: FAILED: ...``) while the other cases go on. README's table
"Each bad input and what the user sees" lists the same rows.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from segtrt.cli import main

SAMPLE_CT = Path(__file__).resolve().parents[1] / "sample_data" / "example_ct.nii.gz"
FAST = ["--device", "cpu", "--no-tta", "--no-progress"]


def _ct_volume() -> np.ndarray:
    """A small real CT crop (z, y, x) float32, so that a run past the input checks is quick."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT)))[:12, 30:70, 30:70].astype(np.float32)


def _write(path: Path, array: np.ndarray, vector: bool = False) -> Path:
    image = sitk.GetImageFromArray(array, isVector=vector)
    sitk.WriteImage(image, str(path), True)
    return path


def nan_voxels(tmp: Path) -> Path:
    volume = _ct_volume()
    volume[3, 5:7, 8] = np.nan
    return _write(tmp / "nan.nii.gz", volume)


def inf_voxel(tmp: Path) -> Path:
    volume = _ct_volume()
    volume[0, 0, 0] = np.inf
    return _write(tmp / "inf.nii.gz", volume)


def damaged_payload(tmp: Path) -> Path:
    raw = bytearray(_write(tmp / "full.nii.gz", _ct_volume()).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp / "damaged.nii.gz").write_bytes(bytes(raw))
    return tmp / "damaged.nii.gz"


def truncated(tmp: Path) -> Path:
    raw = _write(tmp / "full.nii.gz", _ct_volume()).read_bytes()
    (tmp / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    return tmp / "cut.nii.gz"


def zero_size_axis(tmp: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((0, 5, 6), np.float32), np.eye(4)), tmp / "empty.nii.gz")
    return tmp / "empty.nii.gz"


def rgb(tmp: Path) -> Path:
    return _write(tmp / "rgb.nii.gz", np.zeros((4, 5, 6, 3), np.uint8), vector=True)


def complex_values(tmp: Path) -> Path:
    return _write(tmp / "complex.nii.gz", np.zeros((4, 5, 6), np.complex64))


def two_d(tmp: Path) -> Path:
    return _write(tmp / "flat.nii.gz", np.zeros((5, 6), np.int16))


def four_d(tmp: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 2), np.float32), np.eye(4)), tmp / "series.nii.gz")
    return tmp / "series.nii.gz"


def not_an_image(tmp: Path) -> Path:
    (tmp / "notes.nii.gz").write_bytes(gzip.compress(b"just text"))
    return tmp / "notes.nii.gz"


#: (row id, makes the input file, expected message) for inputs that fail their case (exit 1).
BAD_IMAGES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("nan-voxels", nan_voxels, r"has 2 NaN and 0 Inf voxel\(s\) in channel\(s\) 0, within z 3-3, y 5-6, x 8-8"),
    ("damaged-gzip", damaged_payload, r"damaged\.nii\.gz is truncated or corrupt: its compressed data are damaged"),
    ("truncated-gzip", truncated, r"cut\.nii\.gz is truncated or corrupt"),
    ("zero-size-axis", zero_size_axis, r"has an axis without voxels \(size 0x5x6\)"),
    ("rgb", rgb, r"with 3 value\(s\) per voxel; expected a 3D image with one value per voxel"),
    ("complex", complex_values, r"holds complex values"),
    ("2d", two_d, r"is a 2D image"),
    ("4d", four_d, r"is a 4D image of size 5x6x7x2"),
    ("not-an-image", not_an_image, r"cannot read the NIfTI header|cannot read"),
]


@pytest.mark.parametrize("make, message", [row[1:] for row in BAD_IMAGES], ids=[row[0] for row in BAD_IMAGES])
def test_bad_image_fails_its_case_with_one_line(make, message, tmp_path, capsys):
    source = make(tmp_path)
    before = source.read_bytes()
    out = tmp_path / "out"
    assert main(["predict", str(source), "-o", str(out), *FAST]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failed = [line for line in err.splitlines() if ": FAILED: " in line]
    assert len(failed) == 1, err
    assert re.search(message, failed[0]), failed[0]
    assert not any(p.name.endswith(".nii.gz") for p in out.iterdir()), "nothing may be written for a bad case"
    report = json.loads((out / "segtrt_report.json").read_text())
    assert [c["status"] for c in report["cases"]] == ["failed"] and re.search(message, report["cases"][0]["error"])
    assert source.read_bytes() == before, "inputs are never modified"


def test_nonfinite_zero_replaces_and_records_them(tmp_path, capsys):
    source = inf_voxel(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", str(source), "-o", str(out), *FAST, "--nonfinite", "zero"]) == 0
    report = json.loads((out / "segtrt_report.json").read_text())
    assert report["settings"]["nonfinite"] == "zero"
    assert report["cases"][0]["warnings"] == ["1 NaN/Inf input voxel(s) set to 0 (--nonfinite zero)"]
    assert (out / "inf.nii.gz").is_file()


def _existing_file(tmp: Path) -> str:
    (tmp / "taken").write_text("")
    return str(tmp / "taken")


def _below_a_file(tmp: Path) -> str:
    return str(Path(_existing_file(tmp)) / "out")


def _corrupt_onnx(tmp: Path) -> str:
    (tmp / "model.onnx").write_bytes(b"\x08\x07garbage" * 50)
    return str(tmp / "model.onnx")


CT = str(SAMPLE_CT)
#: (row id, argv (a function of tmp_path), expected message) for settings/paths refused up front (exit 2).
BAD_ARGUMENTS: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("step-size-0", lambda t: ["predict", CT, "-o", str(t / "o"), "--step-size", "0"],
     r"segtrt: error: step_size \(--step-size\) must be a fraction of the patch in \(0, 1\].*got 0\.0"),
    ("step-size-1.5", lambda t: ["predict", CT, "-o", str(t / "o"), "--step-size", "1.5"],
     r"step_size \(--step-size\) .*got 1\.5"),
    ("step-size-nan", lambda t: ["predict", CT, "-o", str(t / "o"), "--step-size", "nan"], r"got nan"),
    ("batch-size-0", lambda t: ["predict", CT, "-o", str(t / "o"), "--batch-size", "0"],
     r"batch_size \(--batch-size\) must be a whole number >= 1, got 0"),
    ("device-typo", lambda t: ["predict", CT, "-o", str(t / "o"), "--device", "gpu0"],
     r"device \(--device\) must be auto, cpu, cuda or cuda:N, got 'gpu0'"),
    ("model-twice", lambda t: ["predict", CT, "-o", str(t / "o"), "-m", "A", "-m", "B"],
     r"segtrt predict: error: argument -m/--model: given twice \(A and B\)"),
    ("output-twice", lambda t: ["predict", CT, "-o", str(t / "a"), "-o", str(t / "b")], r"given twice"),
    ("output-is-a-file", lambda t: ["predict", CT, "-o", _existing_file(t), *FAST],
     r"the output .*taken is an existing file; expected a folder"),
    ("output-below-a-file", lambda t: ["predict", CT, "-o", _below_a_file(t), *FAST],
     r"cannot write the output folder .*taken/out \(Not a directory\)"),
    ("output-unwritable", lambda t: ["predict", CT, "-o", "/proc/segtrt-test/out", *FAST],
     r"cannot write the output folder /proc/segtrt-test/out"),
    ("export-output-is-a-folder", lambda t: ["export", "-o", str(t)], r"the output .* is a folder; expected a file"),
    ("build-corrupt-onnx", lambda t: ["build", _corrupt_onnx(t)], r"model\.onnx is not a readable ONNX model"),
    ("verify-patches-0", lambda t: ["verify", "--patches", "0", "--device", "cpu"],
     r"patches \(--patches\) must be a whole number >= 1, got 0"),
    ("verbose-and-quiet", lambda t: ["-v", "predict", CT, "-o", str(t / "o"), "-q"], r"exclude each other"),
]


@pytest.mark.parametrize("argv, message", [row[1:] for row in BAD_ARGUMENTS], ids=[row[0] for row in BAD_ARGUMENTS])
def test_bad_argument_is_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def run_cli(argv: list[str]) -> int:
    """``segtrt`` in process: the exit code, whether it returned or (usage errors) exited."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)
