"""Write every output of one case next to its label map (the caller writes ``stem + '.nii.gz'`` itself).

Files, with ``stem`` the output path without ending (e.g. OUT/patient1/study/ct):

| kind        | file                     | when                         |
|-------------|--------------------------|------------------------------|
| legend      | stem.labels.json         | 'nifti' in formats           |
| itksnap     | stem.itksnap.txt         | 'nifti' in formats           |
| slicer      | stem.ctbl                | 'nifti' in formats           |
| dicom-seg   | stem.seg.dcm             | 'dicom-seg' in formats       |
| rtstruct    | stem.rtstruct.dcm        | 'rtstruct' in formats, and some foreground |
| statistics  | stem.statistics.json     | options.statistics           |
| preview     | stem.preview.png         | options.preview              |

DICOM outputs are checked before anything is written: without the source series' files, or with
files that do not match the label grid, an OutputError is raised and nothing of the case is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from segtrt.errors import OutputError
from segtrt.io.geometry import Geometry
from segtrt.outputs.labels import build_label_table
from segtrt.outputs.legend import write_legend
from segtrt.outputs.options import ModelDescription, OutputOptions
from segtrt.outputs.statistics import label_statistics, write_case_statistics

logger = logging.getLogger(__name__)


@dataclass
class CaseOutputs:
    """What :func:`write_case_outputs` wrote: kind -> path, the statistics rows, and warnings to report."""

    files: dict[str, Path]
    statistics: list[dict[str, Any]] | None
    warnings: list[str] = field(default_factory=list)


def write_case_outputs(stem: Path, labels: np.ndarray, image: np.ndarray, geometry: Geometry,
                       label_names: Mapping[int, str], options: OutputOptions, model: ModelDescription,
                       dicom_files: Sequence[Path] | None = None, case_id: str | None = None) -> CaseOutputs:
    """Write the outputs ``options`` asks for (see the module docstring) and return what was written.

    labels: (Z, Y, X) integer label map on the input grid; image: (C, Z, Y, X) input as read (HU for CT);
    label_names: label value -> name (background excluded, e.g. labels.label_names_from_dataset);
    dicom_files: the source series' instance files (any order) when the input was a DICOM series.
    """
    stem = Path(stem)
    case_id = case_id or stem.name
    if labels.shape != geometry.shape or image.shape[1:] != geometry.shape:
        raise ValueError(f"labels {labels.shape} / image {image.shape} do not fit the geometry {geometry.shape}")
    table = build_label_table(label_names, options.label_codes)
    source = _source_series(options, dicom_files, geometry, case_id)
    outputs = CaseOutputs(files={}, statistics=None)
    if source is not None and source.derived:
        outputs.warnings.append(f"derived missing DICOM UIDs: {', '.join(source.derived)}")
    if "nifti" in options.formats:
        outputs.files.update(write_legend(stem, table, model))
    if "dicom-seg" in options.formats:
        from segtrt.outputs.dicom_seg import write_dicom_seg
        outputs.files["dicom-seg"] = write_dicom_seg(_path(stem, ".seg.dcm"), labels, table, source, model,
                                                     options.seg_encoding, options.series_number)
    if "rtstruct" in options.formats and not labels.any():
        outputs.warnings.append("RTSTRUCT not written: the label map has no foreground (an RTSTRUCT needs an ROI)")
        logger.warning("case %s: %s", case_id, outputs.warnings[-1])
    elif "rtstruct" in options.formats:
        from segtrt.outputs.rtstruct import write_rtstruct
        outputs.files["rtstruct"] = write_rtstruct(_path(stem, ".rtstruct.dcm"), labels, table, source,
                                                   geometry, model, options.series_number + 1)
    if options.statistics:
        outputs.statistics = label_statistics(labels, image, geometry.spacing, table)
        outputs.files["statistics"] = write_case_statistics(_path(stem, ".statistics.json"), outputs.statistics,
                                                            case_id, geometry.spacing)
    if options.preview:
        from segtrt.outputs.preview import write_preview
        outputs.files["preview"] = write_preview(_path(stem, ".preview.png"), labels, image, geometry, table, case_id)
    logger.debug("case %s: wrote %s", case_id, ", ".join(outputs.files))
    return outputs


def _source_series(options: OutputOptions, dicom_files: Sequence[Path] | None, geometry: Geometry, case_id: str):
    """The checked source series when a DICOM output is asked for, else None."""
    if not options.needs_dicom:
        return None
    asked = ", ".join(f for f in options.formats if f != "nifti")
    if not dicom_files:
        raise OutputError(f"case {case_id}: output format {asked} needs a DICOM series as input, got a "
                          "non-DICOM image; expected a folder of DICOM slice files or --output-format nifti")
    try:
        import highdicom  # noqa: F401
        import skimage.measure  # noqa: F401
        from segtrt.outputs.source import read_source_series
    except ImportError as error:
        raise OutputError(f"output format {asked} needs pydicom, highdicom and scikit-image ({error.name} is missing); "
                          "install them with: pip install 'segtrt[dicom]'") from None
    return read_source_series(dicom_files, geometry, options.derive_missing_uids)


def _path(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)
