"""Statistics equal an independent numpy computation on the written files (label map and DICOM series)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from outputs_helpers import SERIES

from segtrt.io import write_segmentation
from segtrt.outputs import BatchCaseSummary, OutputOptions, build_label_table, write_batch_outputs
from segtrt.outputs.statistics import label_statistics


def test_statistics_match_numpy_on_the_written_files(written_case, sample_case, tmp_path):
    outputs, stem = written_case
    nifti = write_segmentation(stem.with_name(stem.name + ".nii.gz"), sample_case.labels, sample_case.geometry)
    labels_image = sitk.ReadImage(str(nifti))
    labels = sitk.GetArrayFromImage(labels_image)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(SERIES)))
    hu = sitk.GetArrayFromImage(reader.Execute()).astype(np.float64)
    voxel_ml = np.prod(labels_image.GetSpacing()) / 1000
    document = json.loads(outputs.files["statistics"].read_text())
    write_batch_outputs(tmp_path, [BatchCaseSummary("patient1", "done", statistics=outputs.statistics)],
                        OutputOptions(statistics=True))
    with (tmp_path / "statistics.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(document["labels"]) == len(csv_rows) == len(sample_case.label_names)
    for row, csv_row in zip(document["labels"], csv_rows):
        inside = hu[labels == row["label"]]
        assert row["voxels"] == inside.size == int(csv_row["voxels"])
        assert row["volume_ml"] == pytest.approx(inside.size * voxel_ml, rel=1e-12)
        if inside.size == 0:
            assert row["mean"] is None and csv_row["mean"] == ""
            continue
        expected = (inside.mean(), inside.std(), inside.min(), inside.max())
        for key, value in zip(("mean", "std", "min", "max"), expected):
            assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-9)
            assert float(csv_row[key]) == row[key]  # the CSV holds the exact float
        assert csv_row["case_id"] == "patient1" and csv_row["name"] == row["name"]


def test_several_channels_get_their_own_columns():
    labels = np.zeros((2, 3, 4), dtype=np.uint8)
    labels[0, 1, 1:3] = 1
    image = np.stack([np.arange(24.0).reshape(2, 3, 4), -np.arange(24.0).reshape(2, 3, 4)])
    [row] = label_statistics(labels, image, (2.0, 1.0, 0.5), build_label_table({1: "a"}))
    assert row["voxels"] == 2 and row["volume_ml"] == pytest.approx(2 * 1.0 / 1000)
    assert (row["mean"], row["min"], row["max"]) == (5.5, 5.0, 6.0)
    assert (row["mean_ch1"], row["min_ch1"], row["max_ch1"], row["std_ch1"]) == (-5.5, -6.0, -5.0, 0.5)
