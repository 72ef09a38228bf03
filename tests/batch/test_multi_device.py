"""--devices on the CPU (cpu,cpu: two workers standing in for two GPUs): outputs equal to one device,
resume across ways of running, usage errors, largest cases first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segtrt.batch import REPORT_NAME
from segtrt.batch.multi_device import largest_first, resolve_devices
from segtrt.cli import main
from segtrt.config import DEFAULT_MODEL_DIR
from segtrt.errors import BackendUnavailableError
from segtrt.io import Case

SAMPLE_CT = Path(__file__).resolve().parents[2] / "sample_data" / "example_ct.nii.gz"
FAST = ["--no-tta", "--no-progress"]


def labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def make_cases(folder: Path, count: int) -> Path:
    """``count`` cases: the sample CT, and flipped left-right for odd indices (different labels)."""
    folder.mkdir(parents=True)
    image = sitk.ReadImage(str(SAMPLE_CT))
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, :, ::-1].copy())
    flipped.CopyInformation(image)
    for index in range(count):
        if index % 2:
            sitk.WriteImage(flipped, str(folder / f"case{index}.nii.gz"), True)
        else:
            shutil.copy(SAMPLE_CT, folder / f"case{index}.nii.gz")
    return folder


def test_two_cpu_workers_give_the_outputs_of_one_device(tmp_path: Path) -> None:
    cases = make_cases(tmp_path / "in", 3)
    assert main(["predict", str(cases), "-o", str(tmp_path / "one"), "--device", "cpu", *FAST]) == 0
    assert main(["predict", str(cases), "-o", str(tmp_path / "two"), "--devices", "cpu,cpu", *FAST]) == 0
    for index in range(3):
        np.testing.assert_array_equal(labels(tmp_path / "two" / f"case{index}.nii.gz"),
                                      labels(tmp_path / "one" / f"case{index}.nii.gz"))
    body = json.loads((tmp_path / "two" / REPORT_NAME).read_text())
    assert body["device"]["workers"] == 2 and body["summary"]["done"] == 3
    per_device = body["io"]["cases_per_device"]
    assert sorted(c for names in per_device.values() for c in names) == ["case0", "case1", "case2"]
    assert len(per_device) == 2, "both devices took cases"
    # refreshed after the run: each device's runner says how its first call went
    assert [entry["device"] for entry in body["backend"]["devices"]] == ["cpu", "cpu"]
    assert all(entry["runner"]["first_call_seconds"] > 0 for entry in body["backend"]["devices"])
    manifest = [json.loads(line) for line in (tmp_path / "two" / "segtrt_manifest.jsonl").read_text().splitlines()]
    assert sorted(r["case"] for r in manifest if r["status"] == "done") == ["case0", "case1", "case2"]
    # the same folder resumes whichever way it was computed
    assert main(["predict", str(cases), "-o", str(tmp_path / "two"), "--device", "cpu", *FAST]) == 0
    assert json.loads((tmp_path / "two" / REPORT_NAME).read_text())["summary"]["skipped"] == 3


def test_devices_usage_errors(tmp_path: Path, capsys) -> None:
    out = ["-o", str(tmp_path / "out")]
    assert main(["predict", str(SAMPLE_CT), *out, "--devices", "cpu,cpu", "--device", "cpu", *FAST]) == 2
    assert "--devices replaces --device" in capsys.readouterr().err
    assert main(["predict", str(SAMPLE_CT), *out, "--devices", ",", *FAST]) == 2
    assert "--devices must list devices" in capsys.readouterr().err
    with pytest.raises(BackendUnavailableError, match="'all' alone"):
        resolve_devices(["all", "cpu"])
    with pytest.raises(BackendUnavailableError, match="--device must be"):
        resolve_devices(["cpu", "tpu"])
    assert [str(d) for d in resolve_devices(["cpu", "cpu"])] == ["cpu", "cpu"]


def test_largest_cases_first(tmp_path: Path) -> None:
    for name, size in (("a", 10), ("b", 30), ("c", 20), ("d", 30)):
        (tmp_path / f"{name}.nii.gz").write_bytes(b"x" * size)
    cases = [Case(n, (tmp_path / f"{n}.nii.gz",)) for n in "abcd"]
    assert [c.case_id for c in largest_first(cases)] == ["b", "d", "c", "a"]


