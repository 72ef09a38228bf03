"""The ``segtrt`` command line, in process (and once as a real subprocess), on the bundled sample model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segtrt.cli import main
from segtrt.config import DEFAULT_MODEL_DIR

SAMPLE_CT = Path(__file__).resolve().parents[1] / "sample_data" / "example_ct.nii.gz"
FAST = ["--device", "cpu", "--no-tta", "--no-progress"]


@pytest.fixture
def cases_dir(tmp_path: Path) -> Path:
    """A folder of nnU-Net style cases: one real CT, one corrupt file."""
    folder = tmp_path / "cases"
    folder.mkdir()
    shutil.copy(SAMPLE_CT, folder / "good_0000.nii.gz")
    (folder / "broken_0000.nii.gz").write_bytes(b"not a nifti file")
    return folder


def test_predict_writes_labels_with_input_geometry(tmp_path, capsys):
    assert main(["predict", str(SAMPLE_CT), "-o", str(tmp_path / "out"), *FAST]) == 0
    out = sitk.ReadImage(str(tmp_path / "out" / "example_ct.nii.gz"))
    ref = sitk.ReadImage(str(SAMPLE_CT))
    assert out.GetSize() == ref.GetSize()
    assert out.GetSpacing() == ref.GetSpacing()
    assert out.GetOrigin() == ref.GetOrigin()
    assert out.GetDirection() == ref.GetDirection()
    assert out.GetPixelID() == sitk.sitkUInt8
    labels = sitk.GetArrayFromImage(out)
    assert set(np.unique(labels)) <= set(range(5)) and labels.max() > 0
    report = json.loads((tmp_path / "out" / "segtrt_report.json").read_text())
    assert report["failed"] == 0 and report["backend"]["backend"] == "torch"
    assert report["device"]["device"] == "cpu"
    # the default --compile auto, decided and said (eager on the CPU)
    assert report["settings"]["compile"] == "auto" and report["backend"]["runner"]["path"] == "eager"
    assert report["backend"]["compile"]["chosen"] == "off" and "auto on cpu" in report["backend"]["compile"]["reason"]
    assert "example_ct" in capsys.readouterr().out


def test_batch_continues_past_a_bad_case_and_reports_it(cases_dir, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in cases_dir.iterdir()}
    code = main(["predict", str(cases_dir), "-o", str(tmp_path / "out"), *FAST])
    assert code == 1
    assert (tmp_path / "out" / "good.nii.gz").exists()
    assert not (tmp_path / "out" / "broken.nii.gz").exists()
    report = json.loads((tmp_path / "out" / "segtrt_report.json").read_text())
    status = {c["case_id"]: c["ok"] for c in report["cases"]}
    assert status == {"broken": False, "good": True}
    assert "broken: FAILED" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in cases_dir.iterdir()} == before, "inputs must never change"


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "missing.nii.gz", "-o", "out"], "does not exist"),
        (["predict", str(SAMPLE_CT), "-o", "out", "-m", "/nonexistent/model"], "nonexistent"),
        (["predict", str(SAMPLE_CT), "-o", "out", "--device", "cuda:7"], "cuda"),
        (["predict", str(SAMPLE_CT), "-o", "out", "--device", "cpu", "-f", "9"], "fold_9"),
        (["predict", str(SAMPLE_CT), "-o", "out", "--device", "cpu", "--precision", "fp16"], "fp16"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("segtrt: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_output_may_not_overwrite_an_input(tmp_path):
    src = tmp_path / "example_ct.nii.gz"
    shutil.copy(SAMPLE_CT, src)
    before = src.read_bytes()
    assert main(["predict", str(src), "-o", str(tmp_path), *FAST]) == 2
    assert src.read_bytes() == before


def test_console_script_end_to_end(tmp_path):
    """The installed entry point, as a user runs it: exit code and output checked."""
    exe = Path(sys.executable).with_name("segtrt")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "segtrt.cli"]
    result = subprocess.run([*cmd, "predict", str(SAMPLE_CT), "-o", str(tmp_path / "o"), *FAST],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "example_ct.nii.gz").exists()
    bad = subprocess.run([*cmd, "predict", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_help_does_not_import_torch():
    code = ("import contextlib, io, sys\nfrom segtrt.cli import main\n"
            "for argv in ([], ['predict'], ['export'], ['verify'], ['build'], ['info']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main([*argv, '--help'])\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["-q", "predict", "x.nii.gz", "-o", "o"], ["predict", "x.nii.gz", "-o", "o", "-q"]])
def test_quiet_and_verbose_before_or_after_the_command(argv):
    from segtrt.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.quiet is True and args.verbose is False
    args = build_parser().parse_args([a.replace("-q", "-v") for a in argv])
    assert args.verbose is True and args.quiet is False
    plain = build_parser().parse_args(["predict", "x.nii.gz", "-o", "o"])
    assert plain.verbose is False and plain.quiet is False


def test_predict_defaults_come_from_predict_settings():
    from dataclasses import fields

    from segtrt.cli import build_parser
    from segtrt.config import PredictSettings

    args = build_parser().parse_args(["predict", "x.nii.gz", "-o", "o"])
    defaults = {f.name: f.default for f in fields(PredictSettings)}
    assert (args.step_size, args.batch_size, args.device, args.backend, args.precision, args.stream, args.compile,
            args.accumulate, args.nonfinite, args.checkpoint) == (
        defaults["step_size"], defaults["batch_size"], defaults["device"], defaults["backend"],
        defaults["precision"], defaults["stream"], defaults["compile"], defaults["accumulate_dtype"],
        defaults["nonfinite"], defaults["checkpoint_name"])


@pytest.mark.parametrize("full_exit", ["0", "1"])
def test_console_exit_flushes_the_error_and_keeps_the_code(tmp_path, full_exit):
    # the executable ends with os._exit after the exit handlers (SEGTRT_FULL_EXIT=1: Python's own teardown)
    done = subprocess.run([sys.executable, "-m", "segtrt.cli", "predict", str(tmp_path / "missing.nii.gz"),
                           "-o", str(tmp_path / "out"), "--device", "cpu"], capture_output=True, text=True,
                          env={**os.environ, "SEGTRT_FULL_EXIT": full_exit}, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("segtrt: error:"), done.stderr


def test_console_exit_waits_for_running_threads():
    # before os._exit the other threads are joined, as at a normal exit: their work is not cut off
    code = (
        "import threading, time\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "import segtrt.cli as cli\n"
        "pool = ThreadPoolExecutor(2)\n"
        "pool.submit(lambda: (time.sleep(0.5), print('pool task done', flush=True)))\n"
        "threading.Thread(target=lambda: (time.sleep(0.7), print('thread done', flush=True))).start()\n"
        "cli.main = lambda: 3\n"
        "cli.console()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["pool task done", "thread done"]
