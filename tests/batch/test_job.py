"""The batch job end to end on the CPU with the bundled model: a messy hospital tree, resume after SIGKILL,
recomputation when the model or a result-changing setting changes, DICOM vs NIfTI, foreign outputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_factory import REAL_SERIES, write_series
from segtrt.batch import MANIFEST_NAME, REPORT_NAME
from segtrt.batch.manifest import TEMPORARY_FILE
from segtrt.cli import main
from segtrt.config import DEFAULT_MODEL_DIR

SAMPLE_CT = Path(__file__).resolve().parents[2] / "sample_data" / "example_ct.nii.gz"
FAST = ["--device", "cpu", "--no-tta", "--no-progress"]


def labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def report(out: Path) -> dict:
    return json.loads((out / REPORT_NAME).read_text())


def flipped_ct(path: Path, ending_writer: str | None = None) -> Path:
    """The sample CT flipped left-right (same geometry), written to ``path`` (format from the ending)."""
    image = sitk.ReadImage(str(SAMPLE_CT))
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, :, ::-1].copy())
    flipped.CopyInformation(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name("tmp" + (ending_writer or "".join(path.suffixes).lower()))
    sitk.WriteImage(flipped, str(temporary), True)
    temporary.rename(path)
    return path


@pytest.fixture(scope="module")
def hospital_tree(tmp_path_factory) -> Path:
    """Nested plain-named NIfTI (an upper-case ending too), NRRD and MHA, a PACS-like DICOM export
    (one study with a usable CT series and a localizer), junk files, a truncated .nii.gz and a 4D image."""
    root = tmp_path_factory.mktemp("hospital")
    (root / "siteA" / "2024").mkdir(parents=True)
    shutil.copy(SAMPLE_CT, root / "siteA" / "2024" / "patient1.nii.gz")
    flipped_ct(root / "siteA" / "2024" / "PATIENT2.NII.GZ", ".nii.gz")
    flipped_ct(root / "siteB" / "scan.nrrd")
    flipped_ct(root / "siteB" / "Head.MHA", ".mha")
    write_series(root / "pacs" / "P1" / "ST1" / "SE1", "ct", patient="P1", shrink=4)
    write_series(root / "pacs" / "P1" / "ST1" / "SE2", "scout", patient="P1", slices=range(2),
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    (root / "pacs" / "P1" / "ST1" / "SE1" / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / "siteB" / "notes.txt").write_text("junk")
    data = SAMPLE_CT.read_bytes()
    (root / "siteB" / "broken.nii.gz").write_bytes(data[: len(data) // 2])
    four_d = sitk.JoinSeries([sitk.ReadImage(str(SAMPLE_CT))] * 2)
    sitk.WriteImage(four_d, str(root / "siteB" / "dynamic.nii.gz"), True)
    return root


def test_hospital_tree(hospital_tree: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in hospital_tree.rglob("*") if p.is_file()}
    assert main(["predict", str(hospital_tree), "-o", str(out), "--recursive", *FAST]) == 1
    body = report(out)
    status = {c["case_id"]: c["status"] for c in body["cases"]}
    assert status == {"pacs/P1/ST1/SE1": "done", "siteA/2024/PATIENT2": "done", "siteA/2024/patient1": "done",
                      "siteB/Head": "done", "siteB/scan": "done", "siteB/broken": "failed", "siteB/dynamic": "failed"}
    errors = {c["case_id"]: c["error"] for c in body["cases"] if c["error"]}
    assert "truncated or corrupt" in errors["siteB/broken"]
    assert "4D image" in errors["siteB/dynamic"]
    startup = body["startup"]  # where the job's start went, each step once per process
    for step in ("model_load_seconds", "discovery_seconds", "plan_seconds", "runners_seconds", "activate_seconds"):
        assert 0 <= startup[step] < 60, (step, startup)
    assert "warm_up" not in startup  # eager on the CPU: no costly first call to make ahead
    skipped = {Path(s["path"]).name: s["reason"] for s in body["discovery"]["skipped"]}
    assert skipped["SE2"].endswith("a localizer (scout) series")
    assert skipped["notes.txt"] == skipped["Thumbs.db"] == "not an image or DICOM file"
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    images = ["pacs/P1/ST1/SE1", "siteA/2024/PATIENT2", "siteA/2024/patient1", "siteB/Head", "siteB/scan"]
    legend = [f"{name}{ending}" for name in images for ending in (".nii.gz", ".labels.json", ".itksnap.txt", ".ctbl")]
    assert written == sorted([MANIFEST_NAME, REPORT_NAME, "index.html", *legend])
    np.testing.assert_array_equal(labels(out / "siteB/scan.nii.gz"), labels(out / "siteA/2024/PATIENT2.nii.gz"))
    assert not np.array_equal(labels(out / "siteA/2024/patient1.nii.gz"), labels(out / "siteB/scan.nii.gz"))
    assert {p: p.stat().st_mtime_ns for p in hospital_tree.rglob("*") if p.is_file()} == before  # inputs untouched
    printed = capsys.readouterr()
    assert "FAILED siteB/broken" in printed.err and "2 of 7 case(s) failed" in printed.err
    # a rerun skips what was done and retries only the failures
    assert main(["predict", str(hospital_tree), "-o", str(out), "--recursive", *FAST]) == 1
    again = report(out)
    assert again["summary"]["skipped"] == 5 and again["summary"]["failed"] == 2 and again["resume"]["resumed"]


def test_dicom_series_gives_the_labels_of_the_same_scan_as_nifti(tmp_path: Path) -> None:
    image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(REAL_SERIES)))
    (tmp_path / "nifti").mkdir()
    sitk.WriteImage(image, str(tmp_path / "nifti" / "ct.nii.gz"), True)
    assert main(["predict", str(REAL_SERIES), str(tmp_path / "nifti" / "ct.nii.gz"), "-o", str(tmp_path / "out"),
                 *FAST]) == 0
    from_dicom, from_nifti = tmp_path / "out" / "example_ct_dicom.nii.gz", tmp_path / "out" / "ct.nii.gz"
    np.testing.assert_array_equal(labels(from_dicom), labels(from_nifti))
    a, b = sitk.ReadImage(str(from_dicom)), sitk.ReadImage(str(from_nifti))
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()
    assert labels(from_dicom).any()


def _cases(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        if index % 2:
            flipped_ct(folder / f"case{index}.nii.gz")
        else:
            shutil.copy(SAMPLE_CT, folder / f"case{index}.nii.gz")
    return folder


def _segtrt(*args: str) -> list[str]:
    return [sys.executable, "-m", "segtrt.cli", "predict", *args, *FAST]


@pytest.mark.slow
def test_sigkill_then_resume_finishes_without_recomputing(tmp_path: Path) -> None:
    cases = _cases(tmp_path / "in", 6)
    reference = tmp_path / "reference"
    assert main(["predict", str(cases), "-o", str(reference), *FAST]) == 0
    out = tmp_path / "out"
    process = subprocess.Popen(_segtrt(str(cases), "-o", str(out), "--io-workers", "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = out / MANIFEST_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.is_file() and manifest.read_text().count('"done"') >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = sum('"done"' in line for line in manifest.read_text().splitlines())
    assert 2 <= done_before < 6
    (out / ".case5.nii.gz.0123456789ab.tmp.nii.gz").write_bytes(b"half")  # as a kill mid-write leaves it
    finished = subprocess.run(_segtrt(str(cases), "-o", str(out)), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    body = report(out)
    assert body["summary"]["skipped"] == done_before and body["summary"]["done"] == 6 - done_before
    assert body["resume"]["temporary_files_removed"] >= 1 and "resuming from" in finished.stderr
    assert not [p for p in out.rglob("*") if TEMPORARY_FILE.match(p.name)]
    for index in range(6):
        np.testing.assert_array_equal(labels(out / f"case{index}.nii.gz"), labels(reference / f"case{index}.nii.gz"))
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    done = sorted(r["case"] for r in records if r["status"] == "done")
    assert done == [f"case{i}" for i in range(6)]  # each case done once


def test_model_or_setting_changes_recompute(tmp_path: Path) -> None:
    cases = _cases(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert main(["predict", str(cases), "-o", str(out), *FAST]) == 0
    assert main(["predict", str(cases), "-o", str(out), *FAST, "--batch-size", "2"]) == 0
    assert report(out)["summary"]["skipped"] == 2, "batch size does not change results: resumed"
    assert main(["predict", str(cases), "-o", str(out), *FAST, "--step-size", "0.75"]) == 0
    assert report(out)["summary"]["done"] == 2, "a result-changing setting recomputes"
    model = Path(shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "model"))
    assert main(["predict", str(cases), "-o", str(out), "-m", str(model), *FAST, "--step-size", "0.75"]) == 0
    assert report(out)["summary"]["skipped"] == 2, "the same model files elsewhere: same identity"
    dataset = model / "dataset.json"
    dataset.write_text(dataset.read_text() + "\n")
    assert main(["predict", str(cases), "-o", str(out), "-m", str(model), *FAST, "--step-size", "0.75"]) == 0
    assert report(out)["summary"]["done"] == 2, "a changed model recomputes"
    os.utime(cases / "case0.nii.gz")
    assert main(["predict", str(cases), "-o", str(out), "-m", str(model), *FAST, "--step-size", "0.75"]) == 0
    assert report(out)["summary"]["done"] == 1, "a touched input recomputes"
    assert main(["predict", str(cases), "-o", str(out), "-m", str(model), *FAST, "--step-size", "0.75",
                 "--overwrite"]) == 0
    assert report(out)["summary"]["done"] == 2


def test_an_output_segtrt_did_not_write_is_never_replaced(tmp_path: Path, capsys) -> None:
    cases = _cases(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "case0.nii.gz").write_bytes(b"someone else's file")
    assert main(["predict", str(cases), "-o", str(out), *FAST]) == 1
    assert (out / "case0.nii.gz").read_bytes() == b"someone else's file"
    assert "exists and this folder's manifest does not say segtrt wrote it" in capsys.readouterr().err
    assert main(["predict", str(cases), "-o", str(out), *FAST, "--overwrite"]) == 0
    assert labels(out / "case0.nii.gz").any()


def test_without_a_model_the_demonstration_model_is_named(tmp_path: Path, caplog) -> None:
    assert main(["predict", str(SAMPLE_CT), "-o", str(tmp_path), *FAST]) == 0
    assert "bundled DEMONSTRATION model" in caplog.text and "not a clinical model" in caplog.text


def test_no_cases_is_a_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / "deeper").mkdir()
    assert main(["predict", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segtrt: error: found no cases to segment in") and "--recursive" in err
    assert err.count("\n") == 1


def test_outputs_beyond_nifti_are_written_recorded_and_resumed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["predict", str(REAL_SERIES), str(SAMPLE_CT), "-o", str(out), *FAST, "--statistics", "--preview"]
    assert main(args) == 0
    body = report(out)
    by_id = {c["case_id"]: c for c in body["cases"]}
    assert set(by_id["example_ct"]["outputs"]) >= {"segmentation", "legend", "statistics", "preview"}
    assert by_id["example_ct"]["statistics"] and body["batch_outputs"] == {"statistics": "statistics.csv",
                                                                           "index": "index.html"}
    for case in by_id.values():
        for relative in case["outputs"].values():
            assert (out / relative).is_file(), relative
    assert main(args) == 0 and report(out)["summary"]["skipped"] == 2, "all outputs there: resumed"
    (out / "example_ct.preview.png").unlink()
    assert main(args) == 0 and report(out)["summary"]["done"] == 1, "a missing output recomputes its case"
    assert main(args[:-1]) == 0 and report(out)["summary"]["done"] == 2, "other outputs asked: recomputed"


def test_dicom_outputs_need_a_dicom_input_and_fail_before_predicting(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["predict", str(REAL_SERIES), str(SAMPLE_CT), "-o", str(out), *FAST,
                 "--output-format", "nifti", "dicom-seg", "--derive-missing-uids"])
    assert code == 1
    by_id = {c["case_id"]: c for c in report(out)["cases"]}
    assert by_id["example_ct_dicom"]["status"] == "done" and (out / "example_ct_dicom.seg.dcm").is_file()
    assert by_id["example_ct"]["status"] == "failed" and not by_id["example_ct"]["seconds"]
    assert "needs a DICOM series as input" in by_id["example_ct"]["error"]
    assert not (out / "example_ct.nii.gz").exists()


def test_sequential_and_overlapped_runs_give_the_same_labels(tmp_path: Path) -> None:
    cases = _cases(tmp_path / "in", 3)
    assert main(["predict", str(cases), "-o", str(tmp_path / "a"), *FAST, "--io-workers", "2"]) == 0
    assert main(["predict", str(cases), "-o", str(tmp_path / "b"), *FAST, "--no-overlap-io"]) == 0
    assert report(tmp_path / "a")["io"]["write_workers"] == 2 and not report(tmp_path / "b")["io"]["overlapped"]
    threads = {name for _, _, name, *_ in report(tmp_path / "b")["io"]["timeline"]}
    assert threads == {"MainThread"}
    for index in range(3):
        np.testing.assert_array_equal(labels(tmp_path / "a" / f"case{index}.nii.gz"),
                                      labels(tmp_path / "b" / f"case{index}.nii.gz"))
