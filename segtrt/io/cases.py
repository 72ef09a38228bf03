"""Turn command-line inputs into cases: a case id and one path per model input channel.

Accepted inputs (``C`` = the model's number of input channels):

- one image file, when C == 1: one case named after the file (ending and a trailing ``_0000`` removed);
- several paths (image files or DICOM series folders): the C channels of ONE case, in order; when the
  files carry nnU-Net channel suffixes (``_0000``, ``_0001``, ...) they must be given in that order;
- one folder of nnU-Net style files ``CASE_0000<ending>`` ... ``CASE_{C-1:04d}<ending>``: every case,
  sorted by id; every case must have all C channel files and no others;
- one folder that is a DICOM series (C == 1): one case named after the folder;
- one folder of DICOM series sub-folders (C == 1): one case per sub-folder, sorted.

Only names are checked here (and DICOM folders are recognised); images are read later, one case at a time.
Hidden files (names starting with '.') are ignored.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from segtrt.errors import InputImageError
from segtrt.io.dicom import is_dicom_series_folder
from segtrt.io.images import SUPPORTED_ENDINGS, image_ending

logger = logging.getLogger(__name__)

_CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")


@dataclass(frozen=True)
class Case:
    """One image to segment: its id (used to name outputs) and one path per channel, in channel order."""

    case_id: str
    channels: tuple[Path, ...]


def discover_cases(
    inputs: Sequence[Path],
    num_channels: int,
    file_ending: str = ".nii.gz",
    channel_names: Sequence[str] | None = None,
) -> list[Case]:
    """Cases described by ``inputs`` for a model with ``num_channels`` input channels.

    ``file_ending`` is the model's (dataset.json ``file_ending``), used to find files in a folder;
    ``channel_names`` (dataset.json ``channel_names``, in order) only make error messages clearer.
    Raises InputImageError when inputs are missing, have the wrong channel count, or a case in a folder
    lacks a channel file.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels must be >= 1, got {num_channels}")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputImageError("no input given; expected an image file, several channel files, or a folder")
    for path in paths:
        if not path.exists():
            raise InputImageError(f"input {path} does not exist; expected an image file or a folder")
    if len(paths) == 1 and paths[0].is_dir():
        return _cases_from_folder(paths[0], num_channels, file_ending, channel_names)
    return [_case_from_channels(paths, num_channels, file_ending, channel_names)]


def split_channel_suffix(stem: str) -> tuple[str, int | None]:
    """'case_0001' -> ('case', 1); a stem without a 4-digit channel suffix -> (stem, None)."""
    match = _CHANNEL_SUFFIX.search(stem)
    if match is None:
        return stem, None
    return stem[: match.start()], int(match.group(1))


def _case_from_channels(
    paths: list[Path], num_channels: int, file_ending: str, names: Sequence[str] | None
) -> Case:
    """One case whose channels are ``paths`` in order (files or DICOM series folders)."""
    if len(paths) != num_channels:
        kind = "path" if len(paths) == 1 else "paths"
        raise InputImageError(
            f"model expects {_describe_channels(num_channels, names)}, got {len(paths)} {kind} "
            f"({', '.join(map(str, paths))}); give one image per channel in this order, or a folder of "
            f"nnU-Net style files CASE_0000{file_ending} ... CASE_{num_channels - 1:04d}{file_ending}"
        )
    if len(paths) > 1:
        for path in paths:
            if path.is_dir() and not is_dicom_series_folder(path):
                raise InputImageError(
                    f"input {path} is a folder without DICOM series; when several inputs are given, each "
                    "must be an image file or a DICOM series folder (one per channel)"
                )
    stems = [_file_stem(path) for path in paths]
    for position, (path, stem) in enumerate(zip(paths, stems)):
        _, channel = split_channel_suffix(stem)
        if len(paths) > 1 and channel is not None and channel != position:
            raise InputImageError(
                f"{path} is channel {channel} by its name but was given as channel {position}; "
                f"give the files in channel order ({_describe_channels(num_channels, names)})"
            )
    case_id, channel = split_channel_suffix(stems[0])
    return Case(case_id if channel == 0 else stems[0], tuple(paths))


def _file_stem(path: Path) -> str:
    """Name without its image ending; a folder (DICOM series) keeps its whole name."""
    if path.is_dir():
        return path.name
    ending = image_ending(path)
    if ending is None:
        raise InputImageError(
            f"cannot use {path}: unsupported file type; expected an image ending in "
            f"{', '.join(SUPPORTED_ENDINGS)}, or a DICOM series folder"
        )
    return path.name[: -len(ending)]


def _cases_from_folder(
    folder: Path, num_channels: int, file_ending: str, names: Sequence[str] | None
) -> list[Case]:
    """Every case of a folder of nnU-Net style files, the folder as one DICOM series, or one case per
    DICOM series sub-folder (checked in this order)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.name.endswith(file_ending)]
    if files:
        skipped = len(entries) - len(files)
        if skipped:
            logger.info("%s: ignoring %d entries not ending in %s", folder, skipped, file_ending)
        return _cases_from_files(folder, files, num_channels, file_ending, names)
    if is_dicom_series_folder(folder):
        return [_case_from_channels([folder], num_channels, file_ending, names)]
    series = [p for p in entries if p.is_dir() and is_dicom_series_folder(p)]
    if series:
        return _cases_from_series_folders(folder, series, num_channels, names)
    raise InputImageError(
        f"found no images in {folder}; expected nnU-Net style files CASE_0000{file_ending}"
        f"{_other_endings_hint(entries, file_ending)}, DICOM files of one series, or DICOM series sub-folders"
    )


def _cases_from_files(
    folder: Path, files: list[Path], num_channels: int, file_ending: str, names: Sequence[str] | None
) -> list[Case]:
    """Group CASE_XXXX<ending> files by case and check each case has exactly channels 0..C-1."""
    by_case: dict[str, dict[int, Path]] = {}
    for path in files:
        case_id, channel = split_channel_suffix(path.name[: -len(file_ending)])
        if channel is None:
            raise InputImageError(
                f"{path.name} in {folder} has no channel suffix; expected nnU-Net style names "
                f"CASE_0000{file_ending} (rename it, or pass the file itself as input)"
            )
        if channel >= num_channels:
            raise InputImageError(
                f"{path.name} in {folder} is channel {channel}, but the model expects "
                f"{_describe_channels(num_channels, names)} (suffixes _0000 to _{num_channels - 1:04d})"
            )
        by_case.setdefault(case_id, {})[channel] = path
    cases = []
    for case_id in sorted(by_case):
        channels = by_case[case_id]
        missing = [c for c in range(num_channels) if c not in channels]
        if missing:
            raise InputImageError(
                f"case {case_id} in {folder} is missing "
                f"{', '.join(f'{case_id}_{c:04d}{file_ending}{_channel_name(c, names)}' for c in missing)}; "
                "the model expects "
                f"{_describe_channels(num_channels, names)}"
            )
        cases.append(Case(case_id, tuple(channels[c] for c in range(num_channels))))
    return cases


def _cases_from_series_folders(
    folder: Path, series: list[Path], num_channels: int, names: Sequence[str] | None
) -> list[Case]:
    if num_channels != 1:
        raise InputImageError(
            f"{folder} holds DICOM series folders, one per case, but the model expects "
            f"{_describe_channels(num_channels, names)}; give the {num_channels} channel series of one case "
            "as separate inputs, in channel order"
        )
    return [Case(path.name, (path,)) for path in series]


def _describe_channels(num_channels: int, names: Sequence[str] | None) -> str:
    text = f"{num_channels} input channel{'s' if num_channels != 1 else ''}"
    return f"{text} ({', '.join(names)})" if names else text


def _channel_name(channel: int, names: Sequence[str] | None) -> str:
    return f" ({names[channel]})" if names and channel < len(names) else ""


def _other_endings_hint(entries: list[Path], file_ending: str) -> str:
    """' (found 3 .nii files)' when the folder holds images with another ending, else ''."""
    endings = sorted({e for p in entries if p.is_file() and (e := image_ending(p)) and e != file_ending})
    if not endings:
        return ""
    count = sum(1 for p in entries if p.is_file() and image_ending(p) in endings)
    return f" (found {count} {'/'.join(endings)} file{'s' if count != 1 else ''}, not {file_ending})"
