"""DICOM Segmentation (SEG) of a label map, built by highdicom against the source series.

One segment per model label (all labels of dataset.json, present in the case or not, so that segment
numbers and colours are the same for every case of a model), numbered 1..N in label-value order.
highdicom copies the patient and study attributes of the source instances, references each source
instance (SOP Instance UID) per frame, and takes the Frame of Reference; the SEG gets new Series and SOP
Instance UIDs, Series Number/Description, and an Algorithm Identification naming segtrt and the model.

Encodings (``OutputOptions.seg_encoding``):
- 'labelmap': Label Map Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.7), one frame per source slice
  holding segment numbers, RLE Lossless;
- 'binary': Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4), one 1-bit frame per segment and slice
  that holds it, Explicit VR Little Endian.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from segtrt.io.writers import atomic_path
from segtrt.outputs.labels import Code, LabelInfo
from segtrt.outputs.options import ModelDescription
from segtrt.outputs.source import SourceSeries

logger = logging.getLogger(__name__)

_TYPES = {"labelmap": (hd.seg.SegmentationTypeValues.LABELMAP, RLELossless),
          "binary": (hd.seg.SegmentationTypeValues.BINARY, ExplicitVRLittleEndian)}


def segment_numbers(labels: np.ndarray, table: Sequence[LabelInfo]) -> np.ndarray:
    """Map a (Z, Y, X) label map to segment numbers 1..N (table order), 0 stays background.

    Raises ValueError when the label map holds a value that ``table`` does not describe.
    """
    values = np.array([info.value for info in table], dtype=np.int64)
    present = np.unique(labels)
    unknown = sorted(set(present.tolist()) - set(values.tolist()) - {0})
    if unknown:
        raise ValueError(f"the label map holds values {unknown} that the model's labels do not name")
    lookup = np.zeros(int(max(values.max(initial=0), present.max(initial=0))) + 1, dtype=np.uint16)
    lookup[values] = np.arange(1, len(values) + 1)
    dtype = np.uint8 if len(values) <= 255 else np.uint16
    return lookup[labels].astype(dtype, copy=False)


def build_dicom_seg(labels: np.ndarray, table: Sequence[LabelInfo], source: SourceSeries,
                    model: ModelDescription, encoding: str, series_number: int) -> hd.seg.Segmentation:
    """The highdicom Segmentation of ``labels`` (Z, Y, X), slice k on source instance k."""
    segmentation_type, transfer_syntax = _TYPES[encoding]
    algorithm = algorithm_identification(model)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=info.name[:64],
            segmented_property_category=_code(info.category), segmented_property_type=_code(info.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*info.color))
        for number, info in enumerate(table, start=1)
    ]
    pixels = segment_numbers(labels, table)
    return hd.seg.Segmentation(
        source_images=list(source.datasets), pixel_array=pixels, segmentation_type=segmentation_type,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="segtrt",
        manufacturer_model_name=model.name[:64] or "nnU-Net model", software_versions=f"segtrt {model.version}",
        device_serial_number=model.identity[:64] or "unknown", transfer_syntax_uid=transfer_syntax,
        series_description=f"segtrt {model.name}"[:64], content_label="SEGTRT",
        content_description=f"Automatic segmentation, {model.configuration}, folds {','.join(model.folds)}"[:64],
        omit_empty_frames=bool(pixels.any()),
    )


def write_dicom_seg(path: Path, labels: np.ndarray, table: Sequence[LabelInfo], source: SourceSeries,
                    model: ModelDescription, encoding: str, series_number: int) -> Path:
    """Build the SEG (see :func:`build_dicom_seg`) and write it atomically to ``path``."""
    segmentation = build_dicom_seg(labels, table, source, model, encoding, series_number)
    with atomic_path(Path(path)) as temporary:
        segmentation.save_as(temporary, enforce_file_format=True)
    logger.debug("wrote DICOM SEG %s (%s, %d frames)", path, encoding, int(segmentation.NumberOfFrames))
    return Path(path)


def algorithm_identification(model: ModelDescription) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification: the model's name, segtrt's version and the model identity, parameters."""
    return hd.AlgorithmIdentificationSequence(
        name=(model.name or "nnU-Net model")[:64], family=codes.cid7162.ArtificialIntelligence,
        version=model.algorithm_version, source="segtrt", parameters=model.algorithm_parameters())


def _code(code: Code) -> hd.sr.CodedConcept:
    value, scheme, meaning = code
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)
