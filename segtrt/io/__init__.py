"""Image input/output: reading channels and DICOM series, geometry, atomic writers, case discovery.

Array order is (z, y, x) everywhere, channels first; spacing in mm in that order. Origin and direction
keep SimpleITK's physical (x, y, z) convention so outputs land on the input's grid.
"""

from segtrt.io.cases import Case, split_channel_suffix
from segtrt.io.dicom import DicomSeries, is_dicom_series_folder, list_dicom_series, read_dicom_series
from segtrt.io.geometry import Geometry
from segtrt.io.images import SUPPORTED_ENDINGS, image_ending, read_channel, read_image
from segtrt.io.writers import atomic_path, atomic_write_bytes, write_probabilities, write_segmentation

__all__ = [
    "SUPPORTED_ENDINGS",
    "Case",
    "DicomSeries",
    "Geometry",
    "atomic_path",
    "atomic_write_bytes",
    "image_ending",
    "is_dicom_series_folder",
    "list_dicom_series",
    "read_channel",
    "read_dicom_series",
    "read_image",
    "write_probabilities",
    "split_channel_suffix",
    "write_segmentation",
]
