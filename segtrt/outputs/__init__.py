"""Outputs beyond the NIfTI label map: label legend, DICOM SEG, RTSTRUCT, statistics, previews, QA page.

The batch job calls :func:`write_case_outputs` once per case (after writing ``stem + '.nii.gz'``) and
:func:`write_batch_outputs` once at the end; the CLI adds :func:`add_output_arguments` to its parser and
builds the options with :func:`output_options_from_args`. DICOM writers (highdicom, pydicom) and the
preview (Pillow) are imported only when asked for.
"""

from segtrt.outputs.batch import BatchCaseSummary, write_batch_outputs
from segtrt.outputs.case import CaseOutputs, write_case_outputs
from segtrt.outputs.labels import LabelInfo, build_label_table, label_names_from_dataset
from segtrt.outputs.options import (
    OUTPUT_FORMATS,
    SEG_ENCODINGS,
    ModelDescription,
    OutputOptions,
    add_output_arguments,
    output_options_from_args,
)
from segtrt.outputs.source_files import series_files

__all__ = [
    "OUTPUT_FORMATS",
    "SEG_ENCODINGS",
    "BatchCaseSummary",
    "CaseOutputs",
    "LabelInfo",
    "ModelDescription",
    "OutputOptions",
    "add_output_arguments",
    "build_label_table",
    "label_names_from_dataset",
    "output_options_from_args",
    "series_files",
    "write_batch_outputs",
    "write_case_outputs",
]
