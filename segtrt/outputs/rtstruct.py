"""RT Structure Set (RTSTRUCT) of a label map, built with pydicom against the source series.

One ROI per label present in the case (an ROI without contours is not useful to a planning system);
contours are the marching-squares outlines of each slice (segtrt.outputs.contours), CLOSED_PLANAR,
each referencing its source instance. Patient, study and frame of reference attributes are copied from the source; the
structure set references the study, the series and every instance (Referenced Frame of Reference
Sequence) and gets new Series / SOP Instance UIDs. The algorithm is identified per ROI (ROI Derivation
Algorithm Identification Sequence) and in the General Equipment module.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from segtrt.io.geometry import Geometry
from segtrt.io.writers import atomic_path
from segtrt.outputs.contours import mask_contours, pixels_to_patient
from segtrt.outputs.dicom_seg import algorithm_identification
from segtrt.outputs.labels import LabelInfo
from segtrt.outputs.options import ModelDescription
from segtrt.outputs.source import SourceSeries

logger = logging.getLogger(__name__)

_PATIENT_STUDY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                  "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                  "AccessionNumber", "StudyDescription", "SpecificCharacterSet")
_TYPE2 = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber"}
_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
_CONTOUR_DATA = 0x30060050  # Detached Study Management, what RTSTRUCTs reference


def build_rtstruct(labels: np.ndarray, table: Sequence[LabelInfo], source: SourceSeries, geometry: Geometry,
                   model: ModelDescription, series_number: int) -> Dataset:
    """The RTSTRUCT data set of ``labels`` (Z, Y, X) on ``geometry``, slice k on source instance k."""
    first = source.datasets[0]
    now = datetime.datetime.now()
    dataset = Dataset()
    for keyword in _PATIENT_STUDY:
        if keyword in first or keyword in _TYPE2:
            setattr(dataset, keyword, first.get(keyword, ""))
    sop_instance_uid = generate_uid()
    dataset.SOPClassUID, dataset.SOPInstanceUID = RTStructureSetStorage, sop_instance_uid
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    dataset.Modality, dataset.SeriesInstanceUID, dataset.SeriesNumber = "RTSTRUCT", generate_uid(), series_number
    dataset.SeriesDescription = f"segtrt {model.name}"[:64]
    dataset.OperatorsName = ""
    dataset.Manufacturer, dataset.ManufacturerModelName = "segtrt", (model.name or "nnU-Net model")[:64]
    dataset.SoftwareVersions, dataset.DeviceSerialNumber = f"segtrt {model.version}", model.identity[:64]
    dataset.InstanceNumber = 1
    dataset.StructureSetLabel = "SEGTRT"
    dataset.StructureSetName = f"segtrt {model.configuration}"[:64]
    dataset.StructureSetDate, dataset.StructureSetTime = dataset.InstanceCreationDate, dataset.InstanceCreationTime
    dataset.FrameOfReferenceUID = first.FrameOfReferenceUID
    dataset.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    dataset.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame(source)])
    rois, contours, observations = [], [], []
    affine = geometry.lps_affine()
    counts = np.bincount(labels.reshape(-1), minlength=max((i.value for i in table), default=0) + 1)
    for number, info in enumerate((i for i in table if counts[i.value]), start=1):
        rois.append(_structure_set_roi(number, info, source, model))
        contours.append(_roi_contour(number, info, labels, source, affine))
        observations.append(_observation(number, info))
    dataset.StructureSetROISequence = DicomSequence(rois)
    dataset.ROIContourSequence = DicomSequence(contours)
    dataset.RTROIObservationsSequence = DicomSequence(observations)
    dataset.file_meta = _file_meta(sop_instance_uid)
    return dataset


def write_rtstruct(path: Path, labels: np.ndarray, table: Sequence[LabelInfo], source: SourceSeries,
                   geometry: Geometry, model: ModelDescription, series_number: int) -> Path:
    """Build the RTSTRUCT (see :func:`build_rtstruct`) and write it atomically to ``path``."""
    dataset = build_rtstruct(labels, table, source, geometry, model, series_number)
    with atomic_path(Path(path)) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)
    logger.debug("wrote RTSTRUCT %s (%d ROIs)", path, len(dataset.StructureSetROISequence))
    return Path(path)


def _instance_reference(dataset: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = dataset.SOPClassUID, dataset.SOPInstanceUID
    return item


def _referenced_frame(source: SourceSeries) -> Dataset:
    first = source.datasets[0]
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([_instance_reference(d) for d in source.datasets])
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = _STUDY_SOP_CLASS, first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame


def _structure_set_roi(number: int, info: LabelInfo, source: SourceSeries, model: ModelDescription) -> Dataset:
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, source.datasets[0].FrameOfReferenceUID
    roi.ROIName = info.name[:64]
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"segtrt {model.version}, {model.name}"[:64]
    roi.ROIDerivationAlgorithmIdentificationSequence = algorithm_identification(model)
    return roi


def _roi_contour(number: int, info: LabelInfo, labels: np.ndarray, source: SourceSeries,
                 affine: np.ndarray) -> Dataset:
    """Contours of label ``info.value``, slice by slice (each slice's mask cropped to its bounding box)."""
    items = []
    for index in range(labels.shape[0]):
        mask = labels[index] == info.value
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        box = mask[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
        for contour in mask_contours(box):
            contour = contour + (rows[0], columns[0])
            points = pixels_to_patient(contour, int(index), affine)
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_instance_reference(source.datasets[index])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourNumber = len(items) + 1
            item[_CONTOUR_DATA] = _decimal_strings(_CONTOUR_DATA, points.ravel())
            items.append(item)
    roi = Dataset()
    roi.ROIDisplayColor = list(info.color)
    roi.ContourSequence = DicomSequence(items)
    roi.ReferencedROINumber = number
    return roi


def _decimal_strings(tag: int, values: np.ndarray) -> RawDataElement:
    """A DS element of ``values`` (mm, 3 decimals) as encoded bytes: thousands of contour values are
    stored without pydicom building and validating one object per value (the slow part of an RTSTRUCT)."""
    text = "\\".join(map("{:.3f}".format, values.tolist())).encode("ascii")
    if len(text) % 2:
        text += b" "
    return RawDataElement(BaseTag(tag), "DS", len(text), text, 0, False, True)


def _observation(number: int, info: LabelInfo) -> Dataset:
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = number, number
    observation.RTROIInterpretedType = "ORGAN"
    observation.ROIInterpreter = ""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = info.type
    observation.RTROIIdentificationCodeSequence = DicomSequence([code])
    return observation


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, sop_instance_uid
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    return meta
