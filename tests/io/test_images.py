"""read_image against nnU-Net v2's SimpleITKIO and nibabel, on real CT data and tiny synthetic images."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from numpy.testing import assert_allclose, assert_array_equal

from segtrt.errors import InputImageError
from segtrt.io import Geometry, read_image

#: Real CT data bundled in the repository (attribution: sample_data/SOURCE.md).
DATA = Path(__file__).resolve().parents[2] / "sample_data"

# A rotation about z by 0.3 rad with the y axis flipped: non-identity, non-axis-aligned direction.
_ANGLE = 0.3
_DIRECTION = (
    np.array([[np.cos(_ANGLE), -np.sin(_ANGLE), 0], [np.sin(_ANGLE), np.cos(_ANGLE), 0], [0, 0, 1]])
    @ np.diag([1.0, -1.0, 1.0])
).ravel()
_SPACING_XYZ = (0.7, 1.3, 2.5)
_ORIGIN = (12.5, -30.25, 7.125)



def make_image(path: Path, array: np.ndarray, origin=_ORIGIN, direction=_DIRECTION) -> Path:
    """Write a (Z, Y, X) array with a non-identity direction and a non-zero origin."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(_SPACING_XYZ)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction))
    sitk.WriteImage(image, str(path), True)
    return path


def nnunet_read(paths: list[Path]) -> tuple[np.ndarray, dict]:
    from nnunetv2.imageio import simpleitk_reader_writer as simpleitk_io
    return simpleitk_io.SimpleITKIO().read_images([str(p) for p in paths])


def _rng_volume(seed: int, dtype, shape=(4, 5, 6)) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * 300).astype(dtype)


def test_real_ct_identical_to_nnunet() -> None:
    ct = DATA / "example_ct.nii.gz"
    data, geometry = read_image([ct])
    reference, properties = nnunet_read([ct])
    # the file is int16: kept compact, and exactly nnU-Net's float32 array once cast
    assert data.dtype == np.int16 and reference.dtype == np.float32 and data.shape == (1, 30, 101, 122)
    assert_array_equal(data.astype(np.float32), reference)
    assert list(geometry.spacing) == list(properties["spacing"])
    assert geometry.origin == properties["sitk_stuff"]["origin"]
    assert geometry.direction == properties["sitk_stuff"]["direction"]


def test_real_ct_agrees_with_nibabel() -> None:
    ct = DATA / "example_ct.nii.gz"
    data, geometry = read_image([ct])
    reference = nib.load(ct)
    assert nib.aff2axcodes(reference.affine) == ("R", "A", "S")
    assert_array_equal(data[0], np.asarray(reference.dataobj).transpose(2, 1, 0))
    # nibabel's affine comes from the float32 header; measured difference 0.0 (both start from the same
    # float32 values), the tolerance allows for different float64 arithmetic.
    assert_allclose(geometry.ras_affine(), reference.affine, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_synthetic_channels_identical_to_nnunet(tmp_path: Path, ending: str) -> None:
    channels = [
        make_image(tmp_path / f"case_0000{ending}", _rng_volume(0, np.int16)),
        make_image(tmp_path / f"case_0001{ending}", _rng_volume(1, np.float64)),
    ]
    data, geometry = read_image(channels)
    reference, properties = nnunet_read(channels)
    assert data.shape == (2, 4, 5, 6) and data.dtype == np.float32
    assert_array_equal(data, reference)
    assert list(geometry.spacing) == list(properties["spacing"])
    assert geometry.origin == properties["sitk_stuff"]["origin"]
    assert geometry.direction == properties["sitk_stuff"]["direction"]
    assert geometry.spacing == tuple(reversed(properties["sitk_stuff"]["spacing"]))


@pytest.mark.parametrize(("dtypes", "expected"), [
    ((np.uint8,), np.uint8), ((np.int16, np.int16), np.int16), ((np.uint16,), np.uint16),
    ((np.int16, np.uint8), np.float32), ((np.int32,), np.float32), ((np.float64,), np.float32),
])
def test_compact_integer_images_keep_their_dtype(tmp_path: Path, dtypes, expected) -> None:
    channels = [make_image(tmp_path / f"case_{i:04d}.nii.gz", (_rng_volume(i, np.float64) % 200).astype(t))
                for i, t in enumerate(dtypes)]
    data, _ = read_image(channels)
    reference, _ = nnunet_read(channels)
    assert data.dtype == expected
    assert_array_equal(data.astype(np.float32), reference)


def test_synthetic_geometry_agrees_with_nibabel(tmp_path: Path) -> None:
    path = make_image(tmp_path / "oblique.nii.gz", _rng_volume(2, np.int16))
    _, geometry = read_image([path])
    # Largest difference measured: 2.7e-8 (the NIfTI header stores float32; sitk and nibabel
    # turn the quaternion into a matrix separately).
    assert_allclose(geometry.ras_affine(), nib.load(path).affine, rtol=0, atol=1e-6)
    assert not np.allclose(np.reshape(geometry.direction, (3, 3)), np.eye(3))


def test_inputs_are_not_modified(tmp_path: Path) -> None:
    path = make_image(tmp_path / "case_0000.nii.gz", _rng_volume(3, np.int16))
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    data, _ = read_image([path])
    data += 1
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_0000.nii.gz"]


def test_mismatched_channel_geometry_names_the_file(tmp_path: Path) -> None:
    first = make_image(tmp_path / "case_0000.nii.gz", _rng_volume(4, np.int16))
    shifted = make_image(tmp_path / "case_0001.nii.gz", _rng_volume(5, np.int16), origin=(12.5, -30.25, 9.0))
    with pytest.raises(InputImageError, match=r"case_0001\.nii\.gz.*origin") as caught:
        read_image([first, shifted])
    assert "\n" not in str(caught.value)


def test_mismatched_channel_shape_is_refused(tmp_path: Path) -> None:
    first = make_image(tmp_path / "a.nii.gz", _rng_volume(6, np.int16))
    other = make_image(tmp_path / "b.nii.gz", _rng_volume(7, np.int16, shape=(4, 5, 7)))
    with pytest.raises(InputImageError, match=r"b\.nii\.gz.*shape \(4, 5, 7\) vs \(4, 5, 6\)"):
        read_image([first, other])


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.nrrd"
    path.write_bytes(b"this is not an image")
    with pytest.raises(InputImageError, match=r"cannot read .*broken\.nrrd") as caught:
        read_image([path])
    assert "\n" not in str(caught.value)


def test_unsupported_missing_and_wrong_dimension_inputs(tmp_path: Path) -> None:
    png = tmp_path / "slice.png"
    png.write_bytes(b"\x89PNG")
    with pytest.raises(InputImageError, match="unsupported file type"):
        read_image([png])
    with pytest.raises(InputImageError, match="does not exist"):
        read_image([tmp_path / "absent.nii.gz"])
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(flat))
    with pytest.raises(InputImageError, match=r"flat\.nii\.gz is a 2D image.*expected a 3D image"):
        read_image([flat])
    rgb = tmp_path / "rgb.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 5, 6, 3), np.uint8), isVector=True), str(rgb))
    with pytest.raises(InputImageError, match="3 value"):
        read_image([rgb])


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused(tmp_path: Path, ending: str) -> None:
    # SimpleITK 2.5 reads a NIfTI cut in half without an error; segtrt must not.
    full = make_image(tmp_path / f"full{ending}", _rng_volume(8, np.int16, shape=(20, 30, 40)))
    cut = tmp_path / f"cut{ending}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    sitk.ReadImage(str(cut))  # the gap this check closes: no error from SimpleITK
    with pytest.raises(InputImageError, match=r"cut\.nii.* is truncated"):
        read_image([cut])


def test_damaged_gzip_payload_is_refused(tmp_path: Path) -> None:
    # One flipped byte in the middle of the compressed data: the trailer's length still matches, and
    # SimpleITK reads the file without an error; the CRC-32 check must refuse it.
    full = make_image(tmp_path / "full.nii.gz", _rng_volume(8, np.float32, shape=(20, 30, 40)))
    raw = bytearray(full.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.nii.gz"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(InputImageError, match=r"damaged\.nii\.gz is truncated or corrupt: its compressed data are damaged"):
        read_image([damaged])


def test_multi_member_gzip_nifti_is_read(tmp_path: Path) -> None:
    # A valid .nii.gz made of two gzip members: its trailer size is the last member's, so the
    # completeness check has to decompress the stream; the file must still be read.
    volume = _rng_volume(9, np.int16)
    raw = make_image(tmp_path / "plain.nii", volume).read_bytes()
    two_members = tmp_path / "members.nii.gz"
    two_members.write_bytes(gzip.compress(raw[:200]) + gzip.compress(raw[200:]))
    data, geometry = read_image([two_members])
    assert_array_equal(data[0], volume)
    assert geometry == read_image([tmp_path / "plain.nii"])[1]


def test_geometry_matches_tolerance() -> None:
    base = Geometry((2.0, 1.0, 1.0), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel()), (4, 5, 6))
    close = Geometry((2.0, 1.0, 1.0), (1.0, 2.0, 3.0 + 1e-7), tuple(np.eye(3).ravel()), (4, 5, 6))
    far = Geometry((2.0, 1.0, 1.0), (1.0, 2.0, 3.1), tuple(np.eye(3).ravel()), (4, 5, 6))
    assert base.matches(close) and not base.matches(far)
    assert not base.matches(Geometry(base.spacing, base.origin, base.direction, (4, 5, 7)))
    with pytest.raises(ValueError, match="direction needs 9 values"):
        Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0), (1, 1, 1))
