"""A case: its name and one input per model channel (finding cases is :mod:`segtrt.batch.discovery`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from segtrt.io.dicom import DicomSeries

_CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")


@dataclass(frozen=True)
class Case:
    """One image to segment.

    case_id: its name, which is also its output path relative to the output folder without ending
        (POSIX separators, sanitised by discovery), e.g. ``patient1/study/ct``.
    channels: one input per model channel, in channel order: an image file, a folder holding one
        DICOM series, or a :class:`~segtrt.io.dicom.DicomSeries` (files found anywhere).
    """

    case_id: str
    channels: tuple[Path | DicomSeries, ...]

    def input_files(self) -> list[Path]:
        """Every file this case reads (a DICOM folder's files are listed when it is read)."""
        files: list[Path] = []
        for channel in self.channels:
            files.extend(channel.files if isinstance(channel, DicomSeries) else [Path(channel)])
        return files


def split_channel_suffix(stem: str) -> tuple[str, int | None]:
    """'case_0001' -> ('case', 1); a stem without a 4-digit channel suffix -> (stem, None)."""
    match = _CHANNEL_SUFFIX.search(stem)
    if match is None:
        return stem, None
    return stem[: match.start()], int(match.group(1))
