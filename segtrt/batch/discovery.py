"""Find the cases in what a user gives: files, folders, nested trees, DICOM exports.

The rules (documented in the README):

- **One-channel models.** Every image file is one case, whatever its name (an nnU-Net ``_0000`` suffix
  is dropped from the case name). Several files on the command line are several cases. Every usable
  DICOM series is one case (see :mod:`segtrt.batch.series` for which series are usable).
- **Multi-channel models** (C > 1) are fed nnU-Net's way: ``CASE_0000<ending>`` ... ``CASE_{C-1:04d}``
  in one folder are the channels of case CASE. On the command line, exactly C files (or DICOM series
  folders) without suffixes are the channels of one case, in the order given.
- **Folders.** Without ``recursive`` a folder's own files are looked at, and each direct sub-folder that
  holds DICOM files; other sub-folders are listed as not searched. With ``recursive`` the whole tree is
  walked (symbolic links followed once). Image files: .nii, .nii.gz, .nrrd, .mha, .mhd in any letter
  case. DICOM files (preamble 'DICM' or ending .dcm) are grouped into series by Series Instance UID
  wherever they sit.
- **Nothing is dropped silently.** Every entry that is not used — hidden files, files of other types,
  incomplete channel sets, unusable DICOM series, sub-folders not searched — is returned in
  ``Discovery.skipped`` with its reason. A bad entry never stops the others.
- **Names.** A case's name is its output path relative to the output folder and mirrors the input
  tree (``root/a/b/x.nii.gz`` -> ``a/b/x``; a DICOM series alone in its folder is named after the
  folder, several series in one folder after their number and description); with several input
  folders each one's name comes first. Names are sanitised and collisions resolved deterministically
  (:mod:`segtrt.batch.naming`). Order is sorted by name.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from segtrt.batch.naming import Rename, resolve_collisions, safe_component, safe_relative
from segtrt.batch.series import SeriesFilter, judge_series, slice_order
from segtrt.errors import InputImageError
from segtrt.io.cases import Case, split_channel_suffix
from segtrt.io.dicom import DicomSeries
from segtrt.io.dicom_index import DicomSeriesGroup, describe_group, files_by_folder, index_dicom_files, looks_like_dicom
from segtrt.io.images import image_ending

logger = logging.getLogger(__name__)

#: Data files that belong to a MetaImage header of the same stem (read through the header).
_MHD_DATA = (".raw", ".zraw")


@dataclass(frozen=True)
class Skipped:
    """An input entry that is not (part of) a case, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Discovery:
    cases: list[Case] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    renamed: list[Rename] = field(default_factory=list)


@dataclass(frozen=True)
class ModelInputs:
    """What the model takes: its number of channels and their names (dataset.json channel_names)."""

    num_channels: int
    channel_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Candidate:
    name: tuple[str, ...]              # wanted output name, as components
    channels: tuple[Path | DicomSeries, ...]
    source: str                        # for collision ordering and messages


@dataclass
class _Found:
    images: list[tuple[Path, Path | None]] = field(default_factory=list)   # (file, its root)
    dicom: list[tuple[Path, Path | None]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def discover(
    inputs: Sequence[Path], model: ModelInputs, recursive: bool = False,
    series_filter: SeriesFilter = SeriesFilter(), exclude: Path | None = None,
) -> Discovery:
    """The cases in ``inputs`` for ``model``; ``exclude`` (the output folder) is never searched.

    Raises InputImageError (a usage error) when an input does not exist or nothing at all is given;
    problems of single entries are returned in ``skipped`` instead.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputImageError("no input given; expected image files, DICOM folders or folders of them")
    for path in paths:
        if not path.exists():
            raise InputImageError(f"input {path} does not exist; expected an image file or a folder")
    paths, repeated = _unique(paths)
    explicit = _explicit_channels(paths, model)
    if explicit is not None:
        return Discovery(cases=[explicit])
    roots = [p for p in paths if p.is_dir()]
    found = _Found()
    for path in paths:
        if path.is_dir():
            _walk(path, recursive, exclude.resolve() if exclude else None, found)
        else:
            _classify(path, None, found)
    prefix = len(roots) > 1
    candidates, skipped = _image_candidates(found.images, model, prefix)
    dicom_candidates, dicom_skipped = _dicom_candidates(found.dicom, model, series_filter, prefix)
    return _named(candidates + dicom_candidates, repeated + found.skipped + skipped + dicom_skipped)


def _unique(paths: list[Path]) -> tuple[list[Path], list[Skipped]]:
    """The inputs without repeats (the same file or folder given twice is one input)."""
    seen: set[Path] = set()
    unique, repeated = [], []
    for path in paths:
        real = path.resolve()
        if real in seen:
            repeated.append(Skipped(str(path), "given more than once; used once"))
            continue
        seen.add(real)
        unique.append(path)
    return unique, repeated


def _named(candidates: list[_Candidate], skipped: list[Skipped]) -> Discovery:
    names, renames = resolve_collisions([(safe_relative(c.name), c.source) for c in candidates])
    cases = sorted((Case(name, c.channels) for name, c in zip(names, candidates)), key=lambda c: c.case_id)
    for rename in renames:
        logger.warning("%s: output name %s is taken by another case; writing it as %s",
                       rename.source, rename.wanted, rename.given)
    return Discovery(cases, sorted(skipped, key=lambda s: s.path), renames)


# ---- walking -------------------------------------------------------------------------------------------

def _walk(root: Path, recursive: bool, exclude: Path | None, found: _Found) -> None:
    """Classify every file under ``root`` (its own files only unless ``recursive``)."""
    seen: dict[str, Path] = {}
    for folder, subfolders, files in os.walk(root, followlinks=True):
        folder_path = Path(folder)
        real = os.path.realpath(folder)
        if exclude is not None and Path(real) == exclude:
            subfolders[:] = []
            continue
        if real in seen:
            found.skipped.append(Skipped(folder, f"the same folder as {seen[real]} (a symbolic link); searched once"))
            subfolders[:] = []
            continue
        seen[real] = folder_path
        subfolders.sort()
        for name in sorted(files):
            _classify(folder_path / name, root, found)
        depth = len(folder_path.relative_to(root).parts)
        if recursive:
            hidden = [d for d in subfolders if d.startswith(".")]
            found.skipped.extend(Skipped(str(folder_path / d), "hidden folder") for d in hidden)
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        elif depth == 0:
            subfolders[:] = [d for d in subfolders if _holds_dicom(folder_path / d, found)]
        else:
            found.skipped.extend(Skipped(str(folder_path / d), "sub-folder not searched (use --recursive)")
                                 for d in subfolders)
            subfolders[:] = []


def _holds_dicom(folder: Path, found: _Found) -> bool:
    """True for a folder with DICOM files directly inside; other folders are reported as not searched."""
    if folder.name.startswith("."):
        found.skipped.append(Skipped(str(folder), "hidden folder"))
        return False
    try:
        holds = any(entry.is_file() and looks_like_dicom(Path(entry.path)) for entry in os.scandir(folder))
    except OSError as error:
        found.skipped.append(Skipped(str(folder), f"cannot list the folder ({error.strerror})"))
        return False
    if not holds:
        found.skipped.append(Skipped(str(folder), "sub-folder not searched (use --recursive)"))
    return holds


def _classify(path: Path, root: Path | None, found: _Found) -> None:
    name = path.name
    if name.startswith("."):
        found.skipped.append(Skipped(str(path), "hidden file"))
    elif image_ending(path) is not None:
        found.images.append((path, root))
    elif path.suffix.lower() in _MHD_DATA and _has_mhd_header(path):
        return  # read through its .mhd header
    elif looks_like_dicom(path):
        found.dicom.append((path, root))
    else:
        found.skipped.append(Skipped(str(path), "not an image or DICOM file"))


def _has_mhd_header(path: Path) -> bool:
    return any(p.suffix.lower() == ".mhd" and p.stem == path.stem for p in path.parent.iterdir())


# ---- image files -------------------------------------------------------------------------------------

def _stem(path: Path) -> str:
    return path.name[: -len(image_ending(path) or "")]


def _relative_parts(path: Path, root: Path | None, prefix: bool) -> tuple[str, ...]:
    """Output name components of ``path`` (a file without ending or a folder) below ``root``."""
    if root is None:
        return (path.name,)
    parts = path.relative_to(root).parts if path != root else (root.name,)
    return ((root.name,) + tuple(parts)) if prefix and path != root else tuple(parts)


def _image_candidates(
    images: list[tuple[Path, Path | None]], model: ModelInputs, prefix: bool
) -> tuple[list[_Candidate], list[Skipped]]:
    groups: dict[tuple[Path, str], dict[int, tuple[Path, Path | None]]] = {}
    plain: list[tuple[Path, Path | None]] = []
    for path, root in images:
        case, channel = split_channel_suffix(_stem(path))
        if channel is None:
            plain.append((path, root))
        else:
            groups.setdefault((path.parent, case), {})[channel] = (path, root)
    if model.num_channels == 1:
        return _single_channel(plain, groups, prefix)
    return _multi_channel(plain, groups, model, prefix)


def _single_channel(plain, groups, prefix: bool) -> tuple[list[_Candidate], list[Skipped]]:
    candidates, skipped = [], []
    for path, root in plain:
        candidates.append(_file_candidate(path, root, _stem(path), prefix))
    for (_, case), channels in sorted(groups.items(), key=lambda item: str(item[0])):
        if 0 in channels and len(channels) > 1:
            files = ", ".join(p.name for _, (p, _) in sorted(channels.items()))
            skipped.extend(Skipped(str(p), f"nnU-Net channel files of case {case} ({files}), but the model "
                                           "takes 1 channel") for _, (p, _) in sorted(channels.items()))
            continue
        for channel, (path, root) in sorted(channels.items()):
            name = case if channel == 0 else _stem(path)
            candidates.append(_file_candidate(path, root, name, prefix))
    return candidates, skipped


def _multi_channel(plain, groups, model: ModelInputs, prefix: bool) -> tuple[list[_Candidate], list[Skipped]]:
    count = model.num_channels
    described = _describe_channels(model)
    skipped = [Skipped(str(path), f"no channel suffix; the model takes {described}: name the files "
                                  f"CASE_0000 ... CASE_{count - 1:04d}") for path, _ in plain]
    candidates = []
    for (_, case), channels in sorted(groups.items(), key=lambda item: str(item[0])):
        if sorted(channels) != list(range(count)):
            missing = [f"_{c:04d}" for c in range(count) if c not in channels]
            extra = [f"_{c:04d}" for c in channels if c >= count]
            detail = f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}"
            skipped.extend(Skipped(str(p), f"case {case}: {detail}; the model takes {described}")
                           for _, (p, _) in sorted(channels.items()))
            continue
        first, root = channels[0]
        files = tuple(channels[c][0] for c in range(count))
        candidates.append(_Candidate(_relative_parts(first.parent / case, root, prefix), files, str(first)))
    return candidates, skipped


def _file_candidate(path: Path, root: Path | None, name: str, prefix: bool) -> _Candidate:
    return _Candidate(_relative_parts(path.parent / name, root, prefix), (path,), str(path))


def _explicit_channels(paths: list[Path], model: ModelInputs) -> Case | None:
    """C > 1 and exactly C command-line files / series folders without channel suffixes: one case."""
    if model.num_channels == 1 or len(paths) != model.num_channels:
        return None
    stems = []
    for path in paths:
        if path.is_dir():
            if not any(looks_like_dicom(p) for p in path.iterdir() if p.is_file()):
                return None
            stems.append(path.name)
        elif image_ending(path) is None:
            return None
        else:
            stems.append(_stem(path))
    suffixes = [split_channel_suffix(stem)[1] for stem in stems]
    if any(s is not None for s in suffixes):
        if suffixes != list(range(model.num_channels)):
            return None
        stems[0] = split_channel_suffix(stems[0])[0]
    return Case(safe_component(stems[0]), tuple(paths))


def _describe_channels(model: ModelInputs) -> str:
    text = f"{model.num_channels} input channel{'s' if model.num_channels != 1 else ''}"
    return f"{text} ({', '.join(model.channel_names)})" if model.channel_names else text


# ---- DICOM -------------------------------------------------------------------------------------------

def _dicom_candidates(
    files: list[tuple[Path, Path | None]], model: ModelInputs, rules: SeriesFilter, prefix: bool
) -> tuple[list[_Candidate], list[Skipped]]:
    if not files:
        return [], []
    roots = {path: root for path, root in files}
    groups, unreadable = index_dicom_files(roots)
    skipped = [Skipped(str(path), reason) for path, reason in unreadable]
    per_folder = files_by_folder(groups)
    candidates = []
    for group in groups:
        _drop_duplicate_instances(group)
        where = _group_location(group)
        if model.num_channels != 1:
            skipped.append(Skipped(where, f"{describe_group(group)}: the model takes {_describe_channels(model)}; "
                                          "give the channel series of one case as separate inputs, in order"))
            continue
        verdict = judge_series(group, model.channel_names, rules)
        if not verdict.usable:
            skipped.append(Skipped(where, f"{describe_group(group)}: {verdict.reason}"))
            continue
        candidates.append(_series_candidate(group, roots[group.headers[0].path], per_folder, prefix))
    return candidates, skipped


def _series_candidate(group: DicomSeriesGroup, root: Path | None, per_folder, prefix: bool) -> _Candidate:
    ordered = [group.headers[i].path for i in slice_order(group.headers)]
    folders = group.folders
    common = Path(os.path.commonpath([str(f) for f in folders]))
    if len(folders) == 1 and len(per_folder[folders[0]]) == 1:
        parts = _relative_parts(common, root, prefix) if root is not None else (common.name,)
    else:
        base = _relative_parts(common, root, prefix) if root is not None else (common.name,)
        if root is not None and common == root and not prefix:
            base = ()
        parts = tuple(base) + (_series_label(group),)
    name = "/".join(parts)
    series = DicomSeries(group.series_uid, tuple(ordered), f"{name} ({describe_group(group)})")
    return _Candidate(parts, (series,), f"{common} {group.key}")


def _series_label(group: DicomSeriesGroup) -> str:
    first = group.first
    words = [w for w in (first.series_number, first.series_description) if w]
    if words:
        return "_".join(words)
    digest = hashlib.sha256(group.key.encode()).hexdigest()[:10]
    return f"series_{group.series_uid[-12:]}" if group.series_uid else f"series_{digest}"


def _group_location(group: DicomSeriesGroup) -> str:
    """The file of a one-file group, else the folder (or the folders' common parent) of the series."""
    if len(group.headers) == 1:
        return str(group.headers[0].path)
    folders = group.folders
    return str(folders[0]) if len(folders) == 1 else str(Path(os.path.commonpath([str(f) for f in folders])))


def _drop_duplicate_instances(group: DicomSeriesGroup) -> None:
    """Keep the first file of each SOP Instance UID (the same slice reached twice, e.g. through a link)."""
    seen: set[str] = set()
    kept = []
    for header in group.headers:
        uid = header.sop_instance_uid
        if uid and uid in seen:
            logger.info("%s: the same DICOM instance as an earlier file; ignoring it", header.path)
            continue
        seen.add(uid)
        kept.append(header)
    group.headers[:] = kept

