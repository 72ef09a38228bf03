"""Which DICOM series a model can use, and why the others are skipped (pure: headers in, verdicts out).

Default policy (every rule can be changed by :class:`SeriesFilter`):

- image series only: no DICOMDIR, no SEG / RTSTRUCT / SR / presentation objects, no localizers (scouts);
- the modality the model's channel names (``CT`` -> CT, ``MR``/``T1``/``T2``/``FLAIR``/``ADC``/``DWI`` ->
  MR, ``PET``/``PT`` -> PT; any other name -> any modality);
- at least ``min_slices`` slices (10), single-frame files of one size and one orientation, one slice per
  position (no duplicates), and evenly spaced slices (no gap more than 10% off the median gap).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from segtrt.io.dicom_index import DicomHeader, DicomSeriesGroup

#: Modalities that are not images segtrt can segment.
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC", "OT_SR"})
#: Relative deviation of a slice gap from the median gap above which a series is refused.
MAX_GAP_DEVIATION = 0.1
DEFAULT_MIN_SLICES = 10

_MR_NAMES = re.compile(r"\b(MR|MRI|T1|T1W|T1CE|T1C|T2|T2W|FLAIR|ADC|DWI|PD)\b", re.IGNORECASE)
_PT_NAMES = re.compile(r"\b(PET|PT)\b", re.IGNORECASE)


@dataclass(frozen=True)
class SeriesFilter:
    """Series selection. ``modality`` None: the modality the model's channel names; '' or 'any': all.

    description: regular expression searched (case-insensitive) in the Series Description.
    series_uids: when given, only these Series Instance UIDs are used (every other series is skipped).
    """

    modality: str | None = None
    description: str | None = None
    min_slices: int = DEFAULT_MIN_SLICES
    series_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeriesVerdict:
    usable: bool
    reason: str = ""


def expected_modality(channel_names: Sequence[str]) -> str | None:
    """The DICOM Modality a one-channel model's channel name implies, or None when it implies none."""
    if len(channel_names) != 1:
        return None
    name = channel_names[0].strip()
    if name.upper() == "CT" or re.search(r"\bCT\b", name, re.IGNORECASE):
        return "CT"
    if _MR_NAMES.search(name):
        return "MR"
    if _PT_NAMES.search(name):
        return "PT"
    return None


def judge_series(group: DicomSeriesGroup, channel_names: Sequence[str], rules: SeriesFilter) -> SeriesVerdict:
    """Whether the model can use ``group``, and if not, the reason (one line)."""
    first = group.first
    if rules.series_uids and group.series_uid not in rules.series_uids:
        return SeriesVerdict(False, "not the Series Instance UID asked for (--series-uid)")
    if any(h.is_directory for h in group.headers):
        return SeriesVerdict(False, "a DICOMDIR (media directory), not an image")
    if first.modality in NON_IMAGE_MODALITIES or (first.rows == 0 and first.columns == 0):
        return SeriesVerdict(False, f"not an image series (Modality {first.modality or 'missing'})")
    wanted = _wanted_modality(channel_names, rules)
    if wanted and first.modality != wanted:
        return SeriesVerdict(False, f"Modality {first.modality or 'missing'}, the model takes {wanted} "
                                    "(--modality to choose another)")
    if any("LOCALIZER" in h.image_type for h in group.headers):
        return SeriesVerdict(False, "a localizer (scout) series")
    if rules.description and not re.search(rules.description, first.series_description, re.IGNORECASE):
        return SeriesVerdict(False, f"Series Description {first.series_description!r} does not match "
                                    f"--series-description {rules.description!r}")
    return _judge_geometry(group.headers, rules.min_slices)


def slice_order(headers: Sequence[DicomHeader]) -> list[int]:
    """Indices of ``headers`` sorted by position along the slice normal (then by path)."""
    normal = _normal(headers[0].orientation)
    if normal is None or any(len(h.position) != 3 for h in headers):
        return sorted(range(len(headers)), key=lambda i: str(headers[i].path))
    depth = [float(np.dot(h.position, normal)) for h in headers]
    return sorted(range(len(headers)), key=lambda i: (depth[i], str(headers[i].path)))


def _wanted_modality(channel_names: Sequence[str], rules: SeriesFilter) -> str | None:
    if rules.modality is None:
        return expected_modality(channel_names)
    if rules.modality.strip().lower() in ("", "any"):
        return None
    return rules.modality.strip().upper()


def _judge_geometry(headers: Sequence[DicomHeader], min_slices: int) -> SeriesVerdict:
    count = len(headers)
    if any(h.frames > 1 for h in headers):
        return SeriesVerdict(False, "multi-frame DICOM files (enhanced series) are not supported yet")
    if count < min_slices:
        return SeriesVerdict(False, f"{count} slice(s), fewer than --min-slices {min_slices}")
    if len({(h.rows, h.columns) for h in headers}) > 1:
        return SeriesVerdict(False, "slices of different sizes")
    orientations = {tuple(round(v, 4) for v in h.orientation) for h in headers}
    if len(orientations) > 1:
        return SeriesVerdict(False, "slices of different orientations")
    normal = _normal(headers[0].orientation)
    if normal is None or any(len(h.position) != 3 for h in headers):
        return SeriesVerdict(False, "slices without Image Position/Orientation (Patient)")
    depth = np.sort([float(np.dot(h.position, normal)) for h in headers])
    gaps = np.diff(depth)
    if np.any(gaps < 1e-3):
        duplicates = int(np.sum(gaps < 1e-3))
        return SeriesVerdict(False, f"{duplicates} duplicate slice position(s) (two files at one position)")
    median = float(np.median(gaps))
    worst = float(np.max(np.abs(gaps - median)))
    if worst > MAX_GAP_DEVIATION * median:
        return SeriesVerdict(False, f"uneven slice spacing (a gap deviates {worst:.3g} mm from {median:.3g} mm: "
                                    "missing slices?)")
    return SeriesVerdict(True)


def _normal(orientation: Sequence[float]) -> np.ndarray | None:
    if len(orientation) != 6:
        return None
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, column)
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 1e-6 else None
