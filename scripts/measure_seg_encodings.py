"""Measure DICOM SEG size and time, binary vs label-map encoding, for a 117-class label set.

Run from the repository root (CPU only, ~20 s):

    python scripts/measure_seg_encodings.py

Cases, all on the real 20-slice 512x512 CT series of sample_data/example_ct_dicom with the 117 labels of
TotalSegmentator's 'total' task: 'totalseg' is TotalSegmentator's own segmentation of that series
(sample_data/example_seg_dicom.nii.gz, 31 labels present), 'dense' puts every label on every slice
(the worst case for the binary encoding, one frame per label and slice). Times: building with highdicom,
writing, and reading back with highdicom (segread + pixels per source instance).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segtrt.io import read_dicom_series  # noqa: E402
from segtrt.io.geometry import Geometry  # noqa: E402
from segtrt.outputs import ModelDescription, build_label_table, series_files  # noqa: E402
from segtrt.outputs.dicom_seg import build_dicom_seg  # noqa: E402
from segtrt.outputs.source import read_source_series  # noqa: E402

CLASSES = 117
MODEL = ModelDescription("measurement", "none", "3d_fullres", ("0",), "0")


def main() -> None:
    series = ROOT / "sample_data" / "example_ct_dicom"
    image = read_dicom_series(series)
    geometry = Geometry.from_sitk(image)
    reference = sitk.ReadImage(str(ROOT / "sample_data" / "example_seg_dicom.nii.gz"))
    totalseg = sitk.GetArrayFromImage(sitk.Resample(reference, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    rows = np.arange(geometry.shape[1])[None, :, None]
    dense = np.broadcast_to(1 + rows * CLASSES // geometry.shape[1], geometry.shape).astype(np.uint8)
    source = read_source_series(series_files(series), geometry, derive_missing_uids=True)
    table = build_label_table({v: f"label {v}" for v in range(1, CLASSES + 1)})
    print(f"{'case':9s} {'encoding':9s} {'frames':>6s} {'MB':>7s} {'build s':>8s} {'write s':>8s} {'read s':>7s}")
    with tempfile.TemporaryDirectory() as folder:
        for name, labels in (("totalseg", totalseg.astype(np.uint8)), ("dense", dense)):
            for encoding in ("labelmap", "binary"):
                path = Path(folder) / f"{name}-{encoding}.dcm"
                start = time.perf_counter()
                seg = build_dicom_seg(labels, table, source, MODEL, encoding, 901)
                built = time.perf_counter()
                seg.save_as(path)
                written = time.perf_counter()
                uids = [d.SOPInstanceUID for d in source.datasets]
                hd.seg.segread(path).get_pixels_by_source_instance(uids, combine_segments=True)
                read = time.perf_counter()
                print(f"{name:9s} {encoding:9s} {int(seg.NumberOfFrames):6d} {path.stat().st_size / 1e6:7.2f} "
                      f"{built - start:8.2f} {written - built:8.2f} {read - written:7.2f}")


if __name__ == "__main__":
    main()
