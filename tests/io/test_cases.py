"""discover_cases: single files, channel lists, nnU-Net style folders (checked against nnU-Net's own
folder listing), DICOM series folders, and the errors users meet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segtrt.errors import InputImageError
from segtrt.io import Case, discover_cases

#: Real CT data bundled in the repository (attribution: sample_data/SOURCE.md).
DATA = Path(__file__).resolve().parents[2] / "sample_data"


def touch_image(path: Path) -> Path:
    """A real (tiny) image file: discovery only looks at names, but the files should be genuine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16)), str(path))
    return path


@pytest.fixture
def dicom_series() -> Path:
    return DATA / "example_ct_dicom"


def test_single_file_case_ids(tmp_path: Path) -> None:
    for name, case_id in [("liver_007_0000.nii.gz", "liver_007"), ("ct.nii.gz", "ct"), ("scan.nrrd", "scan"),
                          ("scan_0001.mha", "scan_0001")]:
        path = touch_image(tmp_path / name)
        assert discover_cases([path], num_channels=1) == [Case(case_id, (path,))]
    upper = (tmp_path / "HEAD.NII.GZ")
    upper.write_bytes((tmp_path / "ct.nii.gz").read_bytes())
    with pytest.raises(InputImageError, match=r"HEAD\.NII\.GZ: unsupported file type"):
        discover_cases([upper], num_channels=1)


def test_several_files_are_the_channels_of_one_case(tmp_path: Path) -> None:
    ct, mr = touch_image(tmp_path / "pat_0000.nii.gz"), touch_image(tmp_path / "pat_0001.nii.gz")
    assert discover_cases([ct, mr], num_channels=2) == [Case("pat", (ct, mr))]
    t1, t2 = touch_image(tmp_path / "t1.nii.gz"), touch_image(tmp_path / "t2.nii.gz")
    assert discover_cases([t2, t1], num_channels=2) == [Case("t2", (t2, t1))]  # unnamed: order as given


def test_channel_files_out_of_order_are_refused(tmp_path: Path) -> None:
    ct, mr = touch_image(tmp_path / "pat_0000.nii.gz"), touch_image(tmp_path / "pat_0001.nii.gz")
    with pytest.raises(InputImageError, match=r"pat_0001\.nii\.gz is channel 1 by its name but was given as "
                                              r"channel 0.*\(CT, MR\)"):
        discover_cases([mr, ct], num_channels=2, channel_names=["CT", "MR"])


def test_wrong_channel_count_message(tmp_path: Path) -> None:
    ct = touch_image(tmp_path / "pat_0000.nii.gz")
    expected = r"^model expects 2 input channels \(CT, MR\), got 1 path"
    with pytest.raises(InputImageError, match=expected) as caught:
        discover_cases([ct], num_channels=2, channel_names=["CT", "MR"])
    assert "\n" not in str(caught.value)
    with pytest.raises(InputImageError, match=r"model expects 1 input channel, got 2 paths"):
        discover_cases([ct, ct], num_channels=1)


def test_folder_matches_nnunet_listing(tmp_path: Path) -> None:
    from nnunetv2.utilities import utils
    for case in ["b_12", "a", "c_case_3"]:  # created unsorted; ids may contain underscores and digits
        for channel in range(2):
            touch_image(tmp_path / f"{case}_{channel:04d}.nii.gz")
    (tmp_path / "dataset.json").write_text("{}")
    cases = discover_cases([tmp_path], num_channels=2)
    reference = utils.create_lists_from_splitted_dataset_folder(str(tmp_path), ".nii.gz", num_processes=1)
    assert [[str(p) for p in case.channels] for case in cases] == reference
    assert [case.case_id for case in cases] == ["a", "b_12", "c_case_3"]
    # Hidden files (an interrupted copy, segtrt's own temporary outputs) are not cases.
    (tmp_path / ".a_0000.nii.gz.5f3a.tmp.nii.gz").write_text("hidden temporary file")
    assert discover_cases([tmp_path], num_channels=2) == cases


def test_folder_with_missing_channel_names_case_and_file(tmp_path: Path) -> None:
    touch_image(tmp_path / "a_0000.nii.gz")
    touch_image(tmp_path / "a_0001.nii.gz")
    touch_image(tmp_path / "b_0000.nii.gz")
    with pytest.raises(InputImageError, match=r"case b in .* is missing b_0001\.nii\.gz \(MR\)"):
        discover_cases([tmp_path], num_channels=2, channel_names=["CT", "MR"])


def test_folder_with_extra_or_unsuffixed_files(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    touch_image(extra / "a_0000.nii.gz")
    touch_image(extra / "a_0001.nii.gz")
    with pytest.raises(InputImageError, match=r"a_0001\.nii\.gz in .* is channel 1, but the model expects 1"):
        discover_cases([extra], num_channels=1)
    plain = tmp_path / "plain"
    touch_image(plain / "patient.nii.gz")
    with pytest.raises(InputImageError, match=r"patient\.nii\.gz in .* has no channel suffix"):
        discover_cases([plain], num_channels=1)


def test_folder_with_other_ending_says_so(tmp_path: Path) -> None:
    touch_image(tmp_path / "a_0000.nii")
    touch_image(tmp_path / "b_0000.nii")
    with pytest.raises(InputImageError, match=r"found no images in .*found 2 \.nii files, not \.nii\.gz"):
        discover_cases([tmp_path], num_channels=1, file_ending=".nii.gz")
    assert [c.case_id for c in discover_cases([tmp_path], num_channels=1, file_ending=".nii")] == ["a", "b"]


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="does not exist"):
        discover_cases([tmp_path / "absent.nii.gz"], num_channels=1)
    with pytest.raises(InputImageError, match="no input given"):
        discover_cases([], num_channels=1)
    with pytest.raises(InputImageError, match="found no images"):
        discover_cases([tmp_path], num_channels=1)


def test_dicom_series_folder_is_one_case(dicom_series: Path) -> None:
    assert discover_cases([dicom_series], num_channels=1) == [Case("example_ct_dicom", (dicom_series,))]
    with pytest.raises(InputImageError, match=r"model expects 2 input channels \(CT, PET\), got 1 path"):
        discover_cases([dicom_series], num_channels=2, channel_names=["CT", "PET"])


def test_folder_of_series_folders(tmp_path: Path, dicom_series: Path) -> None:
    for name in ["patient_b", "patient_a"]:
        (tmp_path / name).symlink_to(dicom_series, target_is_directory=True)
    (tmp_path / "notes").mkdir()  # not DICOM: ignored
    cases = discover_cases([tmp_path], num_channels=1)
    assert [c.case_id for c in cases] == ["patient_a", "patient_b"]
    assert cases[0].channels == (tmp_path / "patient_a",)
    with pytest.raises(InputImageError, match="holds DICOM series folders, one per case"):
        discover_cases([tmp_path], num_channels=2)


def test_series_folders_as_channels(tmp_path: Path, dicom_series: Path) -> None:
    (tmp_path / "ct").symlink_to(dicom_series, target_is_directory=True)
    (tmp_path / "pet").symlink_to(dicom_series, target_is_directory=True)
    (tmp_path / "empty").mkdir()
    assert discover_cases([tmp_path / "ct", tmp_path / "pet"], num_channels=2) == [
        Case("ct", (tmp_path / "ct", tmp_path / "pet"))
    ]
    with pytest.raises(InputImageError, match="is a folder without DICOM series"):
        discover_cases([tmp_path / "ct", tmp_path / "empty"], num_channels=2)
