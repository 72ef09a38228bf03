"""--ray on a local Ray cluster of 2 CPU actors (standing in for GPUs), with the bundled model: outputs equal
to one process, a worker killed mid-batch loses and duplicates no case, a killed driver resumes, Ray stays
off the one-machine path, and the usage errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segtrt.batch import MANIFEST_NAME, REPORT_NAME
from segtrt.spread import predict_batch
from segtrt.cli import main
from segtrt.config import DEFAULT_MODEL_DIR, PredictSettings, ScaleSettings

SAMPLE_CT = Path(__file__).resolve().parents[2] / "sample_data" / "example_ct.nii.gz"
FAST = ["--no-tta", "--no-progress"]
RAY = ["--ray", "--ray-cpu-only", "--ray-workers", "2"]
CASES = 4


def labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def done_records(out: Path) -> list[str]:
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    return sorted(json.loads(line)["case"] for line in lines if json.loads(line)["status"] == "done")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path]:
    """CASES cases (sample CT, flipped for odd indices) and their labels from one process on the CPU."""
    root = tmp_path_factory.mktemp("ray_cases")
    cases = root / "in"
    cases.mkdir()
    image = sitk.ReadImage(str(SAMPLE_CT))
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, :, ::-1].copy())
    flipped.CopyInformation(image)
    for index in range(CASES):
        sitk.WriteImage(flipped if index % 2 else image, str(cases / f"case{index}.nii.gz"), True)
    assert main(["predict", str(cases), "-o", str(root / "reference"), "--device", "cpu", *FAST]) == 0
    return cases, root / "reference"


def assert_same_labels(out: Path, reference: Path) -> None:
    for index in range(CASES):
        np.testing.assert_array_equal(labels(out / f"case{index}.nii.gz"), labels(reference / f"case{index}.nii.gz"))


def test_two_cpu_actors_give_the_outputs_of_one_process(ray_cluster, folder, tmp_path: Path) -> None:
    cases, reference = folder
    out = tmp_path / "out"
    assert main(["predict", str(cases), "-o", str(out), *FAST, *RAY]) == 0
    assert_same_labels(out, reference)
    assert done_records(out) == [f"case{i}" for i in range(CASES)]
    body = json.loads((out / REPORT_NAME).read_text())
    workers = body["io"]["workers"]
    assert len(workers) == 2 and all(w["cases"] >= 1 for w in workers), "both actors took cases"
    assert len({w["pid"] for w in workers}) == 2 and os.getpid() not in {w["pid"] for w in workers}
    assert body["backend"]["ray"]["actor_options"] == {"num_cpus": 1, "num_gpus": 0}
    steps = sorted((entry[0], entry[1]) for entry in body["io"]["timeline"])
    assert steps == sorted((i, step) for i in range(CASES) for step in ("read", "predict", "write"))
    assert not list(out.glob(".segtrt-storage-check-*")), "the shared-storage marker is removed"
    assert ray_cluster.is_initialized(), "a session the process had is reused and left running"


class KillOneWorker:
    """A BatchListener that SIGKILLs a busy actor's process when the first case is recorded."""

    def __init__(self) -> None:
        self.killed: dict | None = None

    def started(self, total: int, to_run: int, skipped: int) -> None:
        pass

    def case_finished(self, record, report) -> None:
        if self.killed is None:
            busy = [{**w, "holding": list(w["holding"])} for w in report.io["workers"] if w["holding"]]
            self.killed = busy[0]
            os.kill(self.killed["pid"], signal.SIGKILL)


def test_a_worker_killed_mid_batch_loses_no_case_and_duplicates_none(ray_cluster, folder, tmp_path: Path) -> None:
    cases, reference = folder
    out, killer = tmp_path / "out", KillOneWorker()
    scale = ScaleSettings(ray_address="local", ray_workers=2, ray_cpu_only=True)
    report = predict_batch(DEFAULT_MODEL_DIR, [cases], out, PredictSettings(device="cpu", mirror=False), listener=killer,
                       scale=scale)
    assert killer.killed is not None and report.counts()["done"] == CASES
    retries = report.io["retries"]
    # the cases the killed actor held (up to --ray-cases-per-actor) are tried again, each once
    retried = [r["case"] for r in retries]
    assert retried and set(retried) <= set(killer.killed["holding"]) and len(set(retried)) == len(retried)
    assert all("was lost" in r["reason"] for r in retries)
    assert report.io["workers"][killer.killed["slot"]]["replaced"] == 1 and not report.io["quarantined"]
    assert done_records(out) == [f"case{i}" for i in range(CASES)], "each case done exactly once"
    assert_same_labels(out, reference)


@pytest.mark.slow
def test_a_killed_driver_resumes(ray_cluster, ray_tmpdir: Path, folder, tmp_path: Path) -> None:
    cases, reference = folder
    out = tmp_path / "out"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir)}
    command = [sys.executable, "-m", "segtrt.cli", "predict", str(cases), "-o", str(out), *FAST, *RAY]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if (out / MANIFEST_NAME).is_file() and (out / MANIFEST_NAME).read_text().count('"done"') >= 1:
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the driver ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local cluster it started
    driver.wait()
    done_before = len(done_records(out))
    assert 1 <= done_before < CASES
    report = predict_batch(DEFAULT_MODEL_DIR, [cases], out, PredictSettings(device="cpu", mirror=False),
                       scale=ScaleSettings(ray_address="local", ray_workers=2, ray_cpu_only=True))
    assert report.counts() == {"done": CASES - done_before, "skipped": done_before, "failed": 0, "pending": 0}
    assert report.resume["resumed"]
    assert done_records(out) == [f"case{i}" for i in range(CASES)], "each case done exactly once"
    assert_same_labels(out, reference)


def test_the_one_machine_path_never_imports_ray(tmp_path: Path) -> None:
    code = ("import sys; from segtrt.cli import main; import segtrt.batch; "
            f"code = main(['predict', {str(SAMPLE_CT)!r}, '-o', {str(tmp_path)!r}, '--device', 'cpu', '--no-tta', "
            "'--no-progress']); print(code, 'ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["0", "False"]


@pytest.mark.parametrize("args, message", [
    (["--ray", "10.0.0.1:6379"], "-o must be an absolute path"),
    (["--ray=not-an-address"], "--ray ADDRESS must be host:port"),
    (["--ray", "--ray-cpu-only"], "--ray-cpu-only needs --ray-workers"),
    (["--ray-workers", "2"], "apply with --ray only"),
    (["--ray", "--devices", "cpu,cpu"], "--devices and --ray exclude each other"),
    (["--ray", "--ray-cpu-only", "--ray-workers", "2", "--device", "cuda"], "--ray-cpu-only runs on the CPU"),
])
def test_usage_errors(args: list[str], message: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(SAMPLE_CT), "-o", "relative_out", *FAST, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_more_actors_than_the_cluster_holds_are_refused(ray_cluster, tmp_path: Path, capsys) -> None:
    args = ["predict", str(SAMPLE_CT), "-o", str(tmp_path / "out"), *FAST, "--ray", "--ray-cpu-only", "--ray-workers", "3"]
    assert main(args) == 2
    assert "3 Ray actor(s) need 3 CPU(s) but the cluster (local) has 2" in capsys.readouterr().err


@pytest.mark.slow
def test_a_driver_joins_a_running_cluster_by_address(ray_cluster, ray_tmpdir: Path, folder, tmp_path: Path) -> None:
    """As on a multi-node cluster: the driver is another process joining by address (absolute -o)."""
    cases, reference = folder
    out = tmp_path / "out"
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir)}
    command = [sys.executable, "-m", "segtrt.cli", "predict", str(cases), "-o", str(out), *FAST,
               "--ray", address, "--ray-cpu-only", "--ray-workers", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"joined the Ray cluster at {address}" in result.stderr
    assert_same_labels(out, reference)
    assert done_records(out) == [f"case{i}" for i in range(CASES)]
    assert ray_cluster.is_initialized() and ray_cluster.cluster_resources()["CPU"] == 2, "the cluster stays up"
