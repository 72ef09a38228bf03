"""Output options: validation and the command-line arguments the batch job adds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from segtrt.errors import OutputError
from segtrt.outputs import OUTPUT_FORMATS, OutputOptions, add_output_arguments, output_options_from_args


def _parse(*argv: str) -> OutputOptions:
    parser = argparse.ArgumentParser()
    add_output_arguments(parser)
    return output_options_from_args(parser.parse_args(list(argv)))


def test_defaults_and_arguments():
    assert _parse() == OutputOptions()
    assert OutputOptions().formats == ("nifti",) and OutputOptions().seg_encoding == "labelmap"
    options = _parse("--output-format", "nifti", "dicom-seg", "rtstruct", "--statistics", "--preview",
                     "--label-codes", "codes.json", "--seg-encoding", "binary", "--derive-missing-uids")
    assert options.formats == OUTPUT_FORMATS and options.statistics and options.preview
    assert options.label_codes == Path("codes.json") and options.seg_encoding == "binary"
    assert options.derive_missing_uids and options.needs_dicom


@pytest.mark.parametrize("kwargs", [{"formats": ()}, {"formats": ("png",)}, {"formats": ("nifti", "nifti")},
                                    {"seg_encoding": "fractional"}, {"series_number": 0}])
def test_invalid_options_are_refused_in_one_line(kwargs):
    with pytest.raises(OutputError) as error:
        OutputOptions(**kwargs)
    assert "\n" not in str(error.value)


def test_unknown_format_on_the_command_line_exits_with_usage(capsys):
    with pytest.raises(SystemExit):
        _parse("--output-format", "png")
    assert "invalid choice" in capsys.readouterr().err
