"""Discovery: plain-named files, nnU-Net channel folders (checked against nnU-Net's own listing), nested
trees, DICOM exports grouped by series, skipped entries with reasons, names and collisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.utilities import utils as nnunet_utils

from dicom_factory import REAL_SERIES, uid, write_dicomdir, write_series
from segtrt.batch.discovery import ModelInputs, discover
from segtrt.batch.series import SeriesFilter
from segtrt.errors import InputImageError
from segtrt.io import DicomSeries

CT = ModelInputs(1, ("CT",))
CT_MR = ModelInputs(2, ("CT", "MR"))


def touch_image(path: Path) -> Path:
    """A real (tiny) image file: discovery only looks at names, but the files should be genuine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = next(e for e in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd") if path.name.lower().endswith(e))
    written = path.with_name("tmp" + ending)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16)), str(written))
    written.rename(path)
    return path


def ids(discovery) -> list[str]:
    return [case.case_id for case in discovery.cases]


def reasons(discovery) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in discovery.skipped}


def test_every_file_is_a_case_whatever_its_name(tmp_path: Path) -> None:
    for name in ["patient1.nii.gz", "patient2.NII.GZ", "liver_007_0000.nii.gz", "scan.nrrd", "Head.MHA",
                 "old_0001.mha", "plain.nii"]:
        touch_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    found = discover([tmp_path], CT)
    assert ids(found) == ["Head", "liver_007", "old_0001", "patient1", "patient2", "plain", "scan"]
    assert reasons(found) == {"notes.txt": "not an image or DICOM file", ".DS_Store": "hidden file"}


def test_several_files_on_the_command_line_are_several_cases(tmp_path: Path) -> None:
    a, b = touch_image(tmp_path / "x" / "a.nii.gz"), touch_image(tmp_path / "y" / "b.nrrd")
    found = discover([b, a], CT)
    assert [(c.case_id, c.channels) for c in found.cases] == [("a", (a,)), ("b", (b,))]
    twice = discover([a, b, a], CT)
    assert twice.cases == found.cases and [s.reason for s in twice.skipped] == ["given more than once; used once"]


def test_metaimage_header_and_data_file_are_one_case(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16))
    sitk.WriteImage(image, str(tmp_path / "vol.mhd"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.mhd", "vol.raw"]
    found = discover([tmp_path], CT)
    assert ids(found) == ["vol"] and not found.skipped


def test_nnunet_channel_folder_matches_nnunet_listing(tmp_path: Path) -> None:
    for case in ["b_12", "a", "c_case_3"]:  # created unsorted; ids may contain underscores and digits
        for channel in range(2):
            touch_image(tmp_path / f"{case}_{channel:04d}.nii.gz")
    (tmp_path / "dataset.json").write_text("{}")
    found = discover([tmp_path], CT_MR)
    reference = nnunet_utils.create_lists_from_splitted_dataset_folder(str(tmp_path), ".nii.gz", num_processes=1)
    assert [[str(p) for p in case.channels] for case in found.cases] == reference
    assert ids(found) == ["a", "b_12", "c_case_3"]
    assert reasons(found) == {"dataset.json": "not an image or DICOM file"}


def test_incomplete_or_unsuffixed_channel_files_are_skipped_not_fatal(tmp_path: Path) -> None:
    for name in ["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "c_0000.nii.gz", "c_0001.nii.gz",
                 "c_0002.nii.gz", "plain.nii.gz"]:
        touch_image(tmp_path / name)
    found = discover([tmp_path], CT_MR)
    assert ids(found) == ["a"]
    skipped = reasons(found)
    assert skipped["b_0000.nii.gz"] == "case b: missing _0001; the model takes 2 input channels (CT, MR)"
    assert skipped["c_0002.nii.gz"].startswith("case c: unexpected _0002")
    assert skipped["plain.nii.gz"].startswith("no channel suffix; the model takes 2 input channels (CT, MR)")


def test_channel_files_of_a_multi_channel_case_are_refused_for_a_one_channel_model(tmp_path: Path) -> None:
    touch_image(tmp_path / "a_0000.nii.gz")
    touch_image(tmp_path / "a_0001.nii.gz")
    touch_image(tmp_path / "b.nii.gz")
    found = discover([tmp_path], CT)
    assert ids(found) == ["b"]
    assert reasons(found)["a_0001.nii.gz"] == ("nnU-Net channel files of case a (a_0000.nii.gz, a_0001.nii.gz), "
                                               "but the model takes 1 channel")


def test_explicit_channel_files_make_one_case_in_the_given_order(tmp_path: Path) -> None:
    t1, t2 = touch_image(tmp_path / "t1.nii.gz"), touch_image(tmp_path / "t2.nii.gz")
    assert [(c.case_id, c.channels) for c in discover([t2, t1], CT_MR).cases] == [("t2", (t2, t1))]
    ct, mr = touch_image(tmp_path / "pat_0000.nii.gz"), touch_image(tmp_path / "pat_0001.nii.gz")
    assert [(c.case_id, c.channels) for c in discover([ct, mr], CT_MR).cases] == [("pat", (ct, mr))]


def test_nested_tree_needs_recursive_and_mirrors_its_paths(tmp_path: Path) -> None:
    touch_image(tmp_path / "top.nii.gz")
    touch_image(tmp_path / "siteA" / "2024" / "p1.nii.gz")
    touch_image(tmp_path / "siteB" / "p1.NII.GZ")
    flat = discover([tmp_path], CT)
    assert ids(flat) == ["top"]
    assert reasons(flat) == {"siteA": "sub-folder not searched (use --recursive)",
                             "siteB": "sub-folder not searched (use --recursive)"}
    deep = discover([tmp_path], CT, recursive=True)
    assert ids(deep) == ["siteA/2024/p1", "siteB/p1", "top"]
    # several input folders: each one's name comes first
    both = discover([tmp_path / "siteA", tmp_path / "siteB"], CT, recursive=True)
    assert ids(both) == ["siteA/2024/p1", "siteB/p1"]


def test_the_output_folder_inside_the_input_is_not_searched(tmp_path: Path) -> None:
    touch_image(tmp_path / "a.nii.gz")
    touch_image(tmp_path / "out" / "a.nii.gz")  # an earlier run's output
    found = discover([tmp_path], CT, recursive=True, exclude=tmp_path / "out")
    assert ids(found) == ["a"]


def test_collisions_are_resolved_deterministically_and_recorded(tmp_path: Path) -> None:
    touch_image(tmp_path / "a.nii.gz")
    touch_image(tmp_path / "a_0000.nii.gz")
    touch_image(tmp_path / "A.nrrd")
    found = discover([tmp_path], CT)
    assert sorted(ids(found)) == ["A", "a_2", "a_3"]
    assert [(r.wanted, r.given) for r in found.renamed] == [("a", "a_2"), ("a", "a_3")]
    assert discover([tmp_path], CT).cases == found.cases  # the same every time


def test_missing_inputs_and_nothing_found(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="does not exist"):
        discover([tmp_path / "absent.nii.gz"], CT)
    with pytest.raises(InputImageError, match="no input given"):
        discover([], CT)
    assert discover([tmp_path], CT).cases == []


# ---- DICOM -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pacs_export(tmp_path_factory) -> Path:
    """patient/study/series folders as a PACS export writes them:

    P1/ST1/SE1: the CT (20 slices); P1/ST1/SE2: a 3-slice localizer (not usable);
    P2/ST1/MIXED: two CT series in one folder (numbers 3 and 4, one described 'Abd/Pelvis 1.0 mm');
    P3/ST1/part1 + part2: one CT series spanning two folders; P3/ST1/SEG1: a DICOM SEG-like object;
    P4/ST1/SE1: an MR series; a DICOMDIR and a junk file at the top.
    """
    root = tmp_path_factory.mktemp("pacs")
    write_series(root / "P1" / "ST1" / "SE1", "ct", patient="P1")
    write_series(root / "P1" / "ST1" / "SE2", "scout", patient="P1", slices=range(3), number=1,
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), description="Topogram")
    write_series(root / "P2" / "ST1" / "MIXED", "a", patient="P2", number=3, prefix="A")
    write_series(root / "P2" / "ST1" / "MIXED", "b", patient="P2", number=4, prefix="B",
                 description="Abd/Pelvis 1.0 mm")
    write_series(root / "P3" / "ST1" / "part1", "split", patient="P3", slices=range(0, 10))
    write_series(root / "P3" / "ST1" / "part2", "split", patient="P3", slices=range(10, 20))
    write_series(root / "P3" / "ST1" / "SEG1", "seg", patient="P3", slices=range(1), modality="SEG")
    write_series(root / "P4" / "ST1" / "SE1", "mr", patient="P4", modality="MR", description="T2 axial")
    write_dicomdir(root / "DICOMDIR")
    (root / "README.TXT").write_text("exported by a PACS")
    return root


def test_pacs_export_is_grouped_by_series_and_every_skip_has_a_reason(pacs_export: Path) -> None:
    found = discover([pacs_export], CT, recursive=True)
    assert ids(found) == ["P1/ST1/SE1", "P2/ST1/MIXED/3_CT_Body_3.0", "P2/ST1/MIXED/4_Abd_Pelvis_1.0_mm",
                          "P3/ST1/2_CT_Body_3.0"]
    by_id = {c.case_id: c for c in found.cases}
    split = by_id["P3/ST1/2_CT_Body_3.0"].channels[0]
    assert isinstance(split, DicomSeries) and len(split.files) == 20
    assert {f.parent.name for f in split.files} == {"part1", "part2"}
    skipped = {s.path.removeprefix(str(pacs_export) + "/"): s.reason for s in found.skipped}
    assert skipped["P1/ST1/SE2"] == 'CT series 1 "Topogram" (3 files): a localizer (scout) series'
    assert skipped["P3/ST1/SEG1/IM0000"].endswith("not an image series (Modality SEG)")
    assert skipped["P4/ST1/SE1"].endswith("Modality MR, the model takes CT (--modality to choose another)")
    assert skipped["README.TXT"] == "not an image or DICOM file"
    assert skipped["DICOMDIR"] == "DICOM series (1 files): a DICOMDIR (media directory), not an image"


def test_series_files_are_in_slice_order(pacs_export: Path) -> None:
    found = discover([pacs_export / "P1" / "ST1" / "SE1"], CT)
    assert ids(found) == ["SE1"]
    files = found.cases[0].channels[0].files
    import pydicom

    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z) and len(set(z)) == 20


def test_series_filters(pacs_export: Path) -> None:
    pick = discover([pacs_export], CT, recursive=True, series_filter=SeriesFilter(description="pelvis"))
    assert ids(pick) == ["P2/ST1/MIXED/4_Abd_Pelvis_1.0_mm"]
    by_uid = discover([pacs_export], CT, recursive=True,
                      series_filter=SeriesFilter(series_uids=(uid("P1/study/ct"),)))
    assert ids(by_uid) == ["P1/ST1/SE1"]
    mr = discover([pacs_export], CT, recursive=True, series_filter=SeriesFilter(modality="MR"))
    assert ids(mr) == ["P4/ST1/SE1"]
    few = discover([pacs_export], CT, recursive=True, series_filter=SeriesFilter(modality="any", min_slices=2))
    assert "P1/ST1/SE2" not in ids(few)  # a localizer stays unusable
    assert "P4/ST1/SE1" in ids(few)


def test_without_recursive_direct_series_sub_folders_are_used(pacs_export: Path) -> None:
    found = discover([pacs_export / "P1" / "ST1"], CT)
    assert ids(found) == ["SE1"]
    assert reasons(found)["SE2"].endswith("a localizer (scout) series")


def test_anonymised_series_without_uids_is_one_case_per_folder(tmp_path: Path) -> None:
    """The bundled real series has blank UIDs (anonymised): its folder makes it one series. A second link
    to the same folder is searched once, and said so."""
    for name in ("a", "b"):
        (tmp_path / name).symlink_to(REAL_SERIES, target_is_directory=True)
    found = discover([tmp_path], CT)
    assert ids(found) == ["a"]
    assert reasons(found) == {"b": f"the same folder as {tmp_path / 'a'} (a symbolic link); searched once"}
    assert len(found.cases[0].channels[0].files) == 20
    assert discover([tmp_path], CT_MR).cases == []


def test_duplicate_and_uneven_slices_are_named_as_such(tmp_path: Path) -> None:
    write_series(tmp_path / "dup", "dup", slices=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10], prefix="D")
    write_series(tmp_path / "gap", "gap", slices=[0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11])
    found = discover([tmp_path], CT)
    assert found.cases == []
    why = reasons(found)
    assert "uneven slice spacing" in why["gap"] and "missing slices?" in why["gap"]
    assert why["dup"] == 'CT series 2 "CT Body 3.0" (12 files): 1 duplicate slice position(s) (two files at one position)'

