"""Previews: radiological orientation for any input direction, true aspect ratio, legend and overlay."""

from __future__ import annotations

import numpy as np
import pytest

from segtrt.io import Geometry
from segtrt.outputs import build_label_table
from segtrt.outputs.labels import label_color
from segtrt.outputs.orientation import display_frame, view_spacing, views
from segtrt.outputs.preview import render_panels, render_preview

# direction matrices (SimpleITK row-major, columns = x, y, z index axes in LPS)
LPS = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
LAS = (1, 0, 0, 0, -1, 0, 0, 0, 1)
SAGITTAL_ACQUISITION = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # x index -> +P, y index -> -S, z index -> -L


def _marker_volume(direction, shape=(6, 7, 8)) -> tuple[np.ndarray, Geometry, tuple[int, int, int]]:
    """A volume with one voxel set, the voxel nearest to the patient's left, anterior, superior corner."""
    geometry = Geometry(spacing=(3.0, 2.0, 1.0), origin=(0, 0, 0), direction=direction, shape=shape)
    affine = geometry.lps_affine()
    zyx = np.indices(shape).reshape(3, -1).T
    xyz1 = np.column_stack([zyx[:, ::-1], np.ones(len(zyx))])
    lps = (xyz1 @ affine.T)[:, :3]
    score = lps[:, 0] - lps[:, 1] + lps[:, 2]  # +L, -P (anterior), +S
    marker = tuple(int(v) for v in zyx[np.argmax(score)])
    volume = np.zeros(shape, dtype=np.uint8)
    volume[marker] = 1
    return volume, geometry, marker


@pytest.mark.parametrize("direction", [LPS, RAS, LAS, SAGITTAL_ACQUISITION])
def test_views_are_in_radiological_orientation(direction):
    volume, geometry, marker = _marker_volume(direction)
    frame = display_frame(geometry)
    display = frame.apply(volume)
    center = frame.index(marker, volume.shape)
    cut = views(display, center)
    # axial: anterior top, patient left on image right; coronal/sagittal: superior top
    assert np.argwhere(cut["axial"]).tolist() == [[0, cut["axial"].shape[1] - 1]]
    assert np.argwhere(cut["coronal"]).tolist() == [[0, cut["coronal"].shape[1] - 1]]
    assert np.argwhere(cut["sagittal"]).tolist() == [[0, 0]]  # superior, anterior on the left
    assert sorted(frame.spacing) == [1.0, 2.0, 3.0]


def test_view_pixel_sizes_follow_the_spacing():
    frame = display_frame(Geometry((3.0, 2.0, 1.0), (0, 0, 0), LPS, (6, 7, 8)))
    assert view_spacing(frame.spacing) == {"axial": (2.0, 1.0), "coronal": (3.0, 1.0), "sagittal": (3.0, 2.0)}


def test_preview_shows_labels_legend_and_true_aspect(tmp_path):
    shape = (20, 64, 64)
    image = np.full((1,) + shape, -1000, dtype=np.int16)
    image[0, :, 8:56, 8:56] = 40
    labels = np.zeros(shape, dtype=np.uint8)
    labels[5:15, 20:40, 20:30] = 1
    geometry = Geometry((5.0, 1.0, 1.0), (0, 0, 0), LPS, shape)
    picture = render_preview(labels, image, geometry, build_label_table({1: "liver", 2: "spleen"}), "case-7")
    pixels = np.asarray(picture)
    assert picture.mode == "RGB"
    outline = np.all(pixels == label_color(1), axis=2)
    assert outline.any()  # overlay outline drawn in the label's colour (also the legend swatch)
    assert not np.all(pixels == label_color(2), axis=2).any()  # absent labels are not in the legend
    panels, _, _ = render_panels(labels, image, geometry, build_label_table({1: "liver"}))
    # physical extents: axial 64 x 64 mm, coronal 100 (S) x 64 (L) mm, sagittal 100 (S) x 64 (P) mm
    # the longest extent (100 mm) spans 512 pixels
    side = round(512 * 64 / 100)
    assert panels["axial"].size == (side, side)
    assert panels["coronal"].size == (side, 512) == panels["sagittal"].size
