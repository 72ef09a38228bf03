"""Pure geometry between label slices and planar contours (no files, no DICOM).

Contours are the 0.5 iso-lines of a slice's binary mask (marching squares, skimage ``find_contours`` on
the mask padded by one pixel so every contour closes): their vertices lie half-way between a pixel
inside and its neighbour outside, so a point-in-polygon test at pixel centres gives the mask back.
Holes and islands become separate contours; a slice is the even-odd (XOR) combination of its
contours, which is how radiotherapy systems read several contours of one ROI on one slice.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon as polygon_pixels
from skimage.measure import find_contours


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a (Y, X) boolean mask, each an (N, 2) float array of (row, column) pixel
    coordinates, N >= 3, the closing point not repeated, vertices on straight runs removed (lossless)."""
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    contours = []
    for contour in find_contours(padded, 0.5):
        contour = contour - 1.0  # undo the padding
        if np.allclose(contour[0], contour[-1]):
            contour = contour[:-1]
        contour = drop_collinear(contour)
        if len(contour) >= 3:
            contours.append(contour)
    return contours


def drop_collinear(contour: np.ndarray) -> np.ndarray:
    """A closed (N, 2) polygon without the vertices that lie on the line through their neighbours."""
    before, after = np.roll(contour, 1, axis=0), np.roll(contour, -1, axis=0)
    incoming, outgoing = contour - before, after - contour
    cross = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    return contour[np.abs(cross) > 1e-9]


def rasterize_contours(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(Y, X) boolean mask of pixel centres inside the contours ((row, column) coordinates), even-odd."""
    mask = np.zeros(shape, dtype=bool)
    for contour in contours:
        inside = np.zeros(shape, dtype=bool)
        rows, columns = polygon_pixels(contour[:, 0], contour[:, 1], shape=shape)
        inside[rows, columns] = True
        mask ^= inside
    return mask


def pixels_to_patient(contour: np.ndarray, slice_index: int, affine: np.ndarray) -> np.ndarray:
    """(N, 2) (row, column) pixel coordinates on slice ``slice_index`` -> (N, 3) patient LPS mm.

    ``affine`` is Geometry.lps_affine(): voxel index (x = column, y = row, z = slice, 1) -> LPS mm.
    """
    count = len(contour)
    index = np.column_stack([contour[:, 1], contour[:, 0], np.full(count, float(slice_index)), np.ones(count)])
    return (index @ affine.T)[:, :3]


def patient_to_pixels(points: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) LPS mm -> ((N, 2) (row, column) pixel coordinates, (N,) slice coordinates)."""
    index = np.column_stack([points, np.ones(len(points))]) @ np.linalg.inv(affine).T
    return np.column_stack([index[:, 1], index[:, 0]]), index[:, 2]
