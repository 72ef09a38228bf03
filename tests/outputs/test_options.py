"""Output options: validation and the command-line arguments the batch job adds."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from outputs_helpers import DATA, SERIES

from segtrt.errors import OutputError
from segtrt.outputs import OUTPUT_FORMATS, OutputOptions, add_output_arguments, output_options_from_args, series_files


def _parse(*argv: str) -> OutputOptions:
    parser = argparse.ArgumentParser()
    add_output_arguments(parser)
    return output_options_from_args(parser.parse_args(list(argv)))


def test_defaults_and_arguments():
    assert _parse() == OutputOptions()
    assert OutputOptions().formats == ("nifti",) and OutputOptions().seg_encoding == "labelmap"
    codes = str(DATA / "label_codes.json")
    options = _parse("--output-format", "nifti", "dicom-seg", "rtstruct", "--statistics", "--preview",
                     "--label-codes", codes, "--seg-encoding", "binary", "--derive-missing-uids")
    assert options.formats == OUTPUT_FORMATS and options.statistics and options.preview
    assert options.label_codes == Path(codes) and options.seg_encoding == "binary"
    assert options.derive_missing_uids and options.needs_dicom


@pytest.mark.parametrize("kwargs", [{"formats": ()}, {"formats": ("png",)}, {"formats": ("nifti", "nifti")},
                                    {"seg_encoding": "fractional"}, {"series_number": 0}])
def test_invalid_options_are_refused_in_one_line(kwargs):
    with pytest.raises(OutputError) as error:
        OutputOptions(**kwargs)
    assert "\n" not in str(error.value)


def test_a_bad_label_codes_file_is_refused_when_the_options_are_made(tmp_path):
    with pytest.raises(OutputError, match="missing.json"):
        _parse("--label-codes", str(tmp_path / "missing.json"))


def test_unknown_format_on_the_command_line_exits_with_usage(capsys):
    with pytest.raises(SystemExit):
        _parse("--output-format", "png")
    assert "invalid choice" in capsys.readouterr().err


def test_importing_the_package_leaves_the_dicom_writers_and_preview_unloaded():
    lazy = ("highdicom", "skimage", "segtrt.outputs.dicom_seg", "segtrt.outputs.rtstruct", "segtrt.outputs.source",
            "segtrt.outputs.preview")
    code = f"import sys, segtrt.outputs; print(sorted(m for m in {lazy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_series_files_lists_the_instances_of_the_series():
    files = series_files(SERIES)
    assert sorted(files) == sorted(p for p in SERIES.iterdir() if p.is_file()) and len(files) == 20
