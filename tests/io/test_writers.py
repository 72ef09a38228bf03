"""Writers: geometry kept exactly, label dtype selection, nnU-Net's file formats, atomic replacement."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from numpy.testing import assert_allclose, assert_array_equal

import segtrt.io.writers as writers
from segtrt.errors import OutputPathError, SegtrtError
from segtrt.io import (
    Geometry,
    atomic_path,
    atomic_write_bytes,
    read_image,
    write_probabilities,
    write_segmentation,
)
from segtrt.io.writers import check_output_file, check_output_folder

_ANGLE = 0.4
_DIRECTION = (
    np.array([[1, 0, 0], [0, np.cos(_ANGLE), -np.sin(_ANGLE)], [0, np.sin(_ANGLE), np.cos(_ANGLE)]])
    @ np.diag([-1.0, 1.0, 1.0])
).ravel()


def make_input(path: Path, shape=(4, 5, 6)) -> Path:
    """A tiny int16 image with a non-identity direction, non-zero origin and anisotropic spacing."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 1000, shape).astype(np.int16))
    image.SetSpacing((0.7, 1.3, 2.5))
    image.SetOrigin((-112.5, 30.25, -7.125))
    image.SetDirection(tuple(_DIRECTION))
    sitk.WriteImage(image, str(path), True)
    return path


def labels_for(geometry: Geometry, high: int = 3) -> np.ndarray:
    return np.random.default_rng(1).integers(0, high + 1, geometry.shape).astype(np.int64)


# Measured difference 0.0 for all four formats. NRRD stores decimal text: with a 0.3 rad rotation a
# second NRRD round trip was seen to move direction cosines by 1.1e-16, hence its tolerance.
@pytest.mark.parametrize(
    ("ending", "tolerance"), [(".nii.gz", 0.0), (".nii", 0.0), (".mha", 0.0), (".nrrd", 1e-15)]
)
def test_round_trip_keeps_geometry(tmp_path: Path, ending: str, tolerance: float) -> None:
    source = make_input(tmp_path / f"case_0000{ending}")
    _, geometry = read_image([source])
    labels = labels_for(geometry)
    out = write_segmentation(tmp_path / "out" / f"case{ending}", labels, geometry)
    written, original = sitk.ReadImage(str(out)), sitk.ReadImage(str(source))
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert_allclose(getattr(written, getter)(), getattr(original, getter)(), rtol=0, atol=tolerance)
    assert_array_equal(sitk.GetArrayFromImage(written), labels)
    assert Geometry.from_sitk(written).matches(geometry, tol=1e-12)


def test_nifti_affine_equals_input_affine(tmp_path: Path) -> None:
    source = make_input(tmp_path / "case_0000.nii.gz")
    _, geometry = read_image([source])
    out = write_segmentation(tmp_path / "case.nii.gz", labels_for(geometry), geometry)
    written, original = nib.load(out), nib.load(source)
    assert_array_equal(written.affine, original.affine)
    # Geometry's own affine vs nibabel's float32 header: measured difference 2.7e-8.
    assert_allclose(geometry.ras_affine(), written.affine, rtol=0, atol=1e-6)
    assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), labels_for(geometry))


def test_same_file_content_as_nnunet_write_seg(tmp_path: Path) -> None:
    from nnunetv2.imageio import simpleitk_reader_writer as simpleitk_io
    source = make_input(tmp_path / "case_0000.nii.gz")
    _, geometry = read_image([source])
    _, properties = simpleitk_io.SimpleITKIO().read_images([str(source)])
    labels = labels_for(geometry, high=200)
    ours = write_segmentation(tmp_path / "ours.nii.gz", labels, geometry)
    theirs = tmp_path / "theirs.nii.gz"
    simpleitk_io.SimpleITKIO().write_seg(labels, str(theirs), properties)
    ours_image, theirs_image = sitk.ReadImage(str(ours)), sitk.ReadImage(str(theirs))
    assert_array_equal(sitk.GetArrayFromImage(ours_image), sitk.GetArrayFromImage(theirs_image))
    assert ours_image.GetPixelID() == theirs_image.GetPixelID() == sitk.sitkUInt8
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(ours_image, getter)() == getattr(theirs_image, getter)()
    # compressed by ISA-L instead of ITK's zlib: the same NIfTI bytes once decompressed
    assert gzip.decompress(ours.read_bytes()) == gzip.decompress(theirs.read_bytes())
    assert len(ours.read_bytes()) != len(theirs.read_bytes())  # (so the codec really is another one)


def test_nifti_gz_leaves_no_temporary_file(tmp_path: Path) -> None:
    geometry = Geometry((2.0, 1.0, 1.0), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel()), (20, 30, 40))
    write_segmentation(tmp_path / "seg.nii.gz", labels_for(geometry), geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]


@pytest.mark.parametrize(("high", "pixel_id"), [(1, sitk.sitkUInt8), (255, sitk.sitkUInt8),
                                               (256, sitk.sitkUInt16), (65535, sitk.sitkUInt16)])
def test_label_dtype_follows_largest_label(tmp_path: Path, high: int, pixel_id: int) -> None:
    geometry = Geometry((2.0, 1.0, 1.0), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel()), (2, 3, 4))
    labels = np.zeros(geometry.shape, dtype=np.int32)
    labels[1, 2, 3] = high
    image = sitk.ReadImage(str(write_segmentation(tmp_path / "seg.nii.gz", labels, geometry)))
    assert image.GetPixelID() == pixel_id
    assert_array_equal(sitk.GetArrayFromImage(image), labels)


def test_invalid_labels_are_refused(tmp_path: Path) -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), (2, 2, 2))
    with pytest.raises(ValueError, match="0..65535"):
        write_segmentation(tmp_path / "a.nii.gz", np.full((2, 2, 2), -1), geometry)
    with pytest.raises(ValueError, match="0..65535"):
        write_segmentation(tmp_path / "a.nii.gz", np.full((2, 2, 2), 70000), geometry)
    with pytest.raises(TypeError, match="integer"):
        write_segmentation(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.float32), geometry)
    with pytest.raises(ValueError, match="do not fit"):
        write_segmentation(tmp_path / "a.nii.gz", np.zeros((2, 2, 3), np.uint8), geometry)
    with pytest.raises(SegtrtError, match="unsupported file type"):
        write_segmentation(tmp_path / "a.png", np.zeros((2, 2, 2), np.uint8), geometry)
    assert list(tmp_path.iterdir()) == []


def test_probabilities_in_nnunet_format(tmp_path: Path) -> None:
    probabilities = np.random.default_rng(2).random((3, 2, 4, 5)).astype(np.float32)
    out = write_probabilities(tmp_path / "case.npz", probabilities)
    with np.load(out) as stored:
        assert list(stored.keys()) == ["probabilities"]
        assert stored["probabilities"].dtype == np.float32
        assert_array_equal(stored["probabilities"], probabilities)
    with pytest.raises(ValueError, match=r"\(K, Z, Y, X\)"):
        write_probabilities(tmp_path / "bad.npz", probabilities[0])


def _failing_write_image(image: sitk.Image, path: str, compress: bool) -> None:
    """Stand-in for SimpleITK.WriteImage that dies half way: a partial file, then an error."""
    Path(path).write_bytes(b"partial")
    raise RuntimeError("disk full")


def test_failed_write_keeps_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), (2, 2, 2))
    target = write_segmentation(tmp_path / "seg.nii.gz", np.ones((2, 2, 2), np.uint8), geometry)
    before = target.read_bytes()
    monkeypatch.setattr(writers.sitk, "WriteImage", _failing_write_image)
    with pytest.raises(RuntimeError, match="disk full"):
        write_segmentation(target, np.zeros((2, 2, 2), np.uint8), geometry)
    with pytest.raises(RuntimeError, match="disk full"):
        write_segmentation(tmp_path / "new.nii.gz", np.zeros((2, 2, 2), np.uint8), geometry)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]


def test_atomic_path_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(KeyError):
        with atomic_path(target) as temporary:
            assert temporary.parent == tmp_path and temporary.name.endswith(".json")
            temporary.write_bytes(b"new but interrupted")
            raise KeyError("interrupted")
    assert target.read_bytes() == b"old"
    with pytest.raises(RuntimeError, match="did not create"):
        with atomic_path(target):
            pass
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_written_files_get_normal_permissions(tmp_path: Path) -> None:
    reference = tmp_path / "plain"
    reference.write_bytes(b"x")  # created with the process umask, as any ordinary write
    atomic_write_bytes(tmp_path / "atomic", b"x")
    assert os.stat(tmp_path / "atomic").st_mode == os.stat(reference).st_mode


def test_concurrent_writers_use_unique_temporary_names(tmp_path: Path) -> None:
    # two writers of one destination at once (threads of one process): each gets its own temporary file
    with atomic_path(tmp_path / "plan.engine") as first, atomic_path(tmp_path / "plan.engine") as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_bytes(b"one")
        second.write_bytes(b"two")
    assert (tmp_path / "plan.engine").read_bytes() == b"one"  # the outer block finishes last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.engine"]


def test_output_checks_name_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="is an existing file; expected a folder"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(OutputPathError, match=r"\(Not a directory\)"):
        check_output_folder(tmp_path / "file" / "below")
    with pytest.raises(OutputPathError, match="is a folder; expected a file path"):
        check_output_file(tmp_path)
    check_output_folder(tmp_path / "new" / "nested")
    assert (tmp_path / "new" / "nested").is_dir() and not list((tmp_path / "new" / "nested").iterdir())
    check_output_file(tmp_path / "other" / "model.onnx")
    assert not (tmp_path / "other" / "model.onnx").exists()
