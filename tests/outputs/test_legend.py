"""Label legend: JSON, ITK-SNAP label description file and 3D Slicer colour table, checked against their
formats; label codes files; stable colours."""

from __future__ import annotations

import json
import re

import pytest
from outputs_helpers import DATA, MODEL

from segtrt.errors import OutputError
from segtrt.outputs import build_label_table, label_names_from_dataset
from segtrt.outputs.labels import GENERIC_CODE, label_color
from segtrt.outputs.legend import write_legend

# ITK-SNAP: IDX R G B A(0..1) VIS MSH "LABEL"
ITKSNAP_LINE = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"([^"]*)"$')


def test_legend_files_follow_the_itksnap_and_slicer_formats(tmp_path):
    table = build_label_table({1: "liver", 2: "left kidney", 10: "stomach"}, DATA / "label_codes.json")
    files = write_legend(tmp_path / "ct", table, MODEL)
    entries = [ITKSNAP_LINE.match(line) for line in files["itksnap"].read_text().splitlines()
               if not line.startswith("#")]
    assert all(entries)
    assert [(int(m[1]), m[8]) for m in entries] == [(0, "Clear Label"), (1, "liver"), (2, "left kidney"),
                                                   (10, "stomach")]
    assert [int(entries[1][i]) for i in (2, 3, 4)] == list(label_color(1))
    lines = files["slicer"].read_text().splitlines()
    assert lines[0] == "# Color table file ct.ctbl" and lines[1] == "# 4 values"
    rows = [line.split() for line in lines[2:]]
    assert all(len(r) == 6 for r in rows)  # index name R G B A, names without spaces
    assert [r[1] for r in rows] == ["Background", "liver", "left_kidney", "stomach"]
    assert rows[3][2:] == [str(c) for c in label_color(10)] + ["255"]
    legend = json.loads(files["legend"].read_text())
    assert legend["labels"][0]["type"]["CodeMeaning"] == "Liver" and legend["labels"][0]["coded"]
    assert legend["labels"][1]["type"]["CodeValue"] == GENERIC_CODE[0] and not legend["labels"][1]["coded"]
    assert legend["model"]["identity"] == MODEL.identity


def test_colours_are_stable_and_distinct():
    colors = [label_color(v) for v in range(1, 130)]
    assert colors == [label_color(v) for v in range(1, 130)]
    assert len(set(colors)) == len(colors)
    assert build_label_table({3: "x"})[0].color == label_color(3)


def test_label_names_from_dataset_json_with_regions():
    plain = {"labels": {"background": 0, "liver": 1, "tumour": 2}}
    assert label_names_from_dataset(plain) == {1: "liver", 2: "tumour"}
    regions = {"labels": {"background": 0, "whole": [1, 2], "core": [2]}, "regions_class_order": [1, 2]}
    assert label_names_from_dataset(regions) == {1: "whole", 2: "core"}


@pytest.mark.parametrize("content", ['[1, 2]', '{"liver": {"category": {}}}',
                                     '{"liver": {"type": {"CodeValue": "1", "CodeMeaning": "x"}}}',
                                     '{"liver": {"type": {"CodeValue": "1", "CodingSchemeDesignator": "S", '
                                     '"CodeMeaning": "x"}, "color": [1, 2]}}', "not json"])
def test_bad_label_codes_files_are_refused_in_one_line(tmp_path, content):
    path = tmp_path / "codes.json"
    path.write_text(content)
    with pytest.raises(OutputError) as error:
        build_label_table({1: "liver"}, path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
