"""Pure: put a (Z, Y, X) volume into radiological display orientation, and cut the three views.

The volume is permuted and flipped (no resampling) so that its axes run, in index order, towards the
patient's Superior, Posterior and Left (LPS axes 2, 1, 0), each array axis taken as the patient axis
its direction cosine is closest to (an oblique grid is shown as it lies, labelled with the nearest axes).
Views then follow the radiological convention:

- axial: anterior at the top, the patient's right on the image's left (rows +P, columns +L);
- coronal: superior at the top, the patient's right on the image's left (rows -S, columns +L);
- sagittal: superior at the top, anterior on the left (rows -S, columns +P).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segtrt.io.geometry import Geometry

#: Letters at the (top, bottom, left, right) edges of each view.
VIEW_EDGES = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}


@dataclass(frozen=True)
class DisplayFrame:
    """How array axes map onto the display volume (S, P, L).

    permutation: array axis giving display axis 0, 1, 2 (for np.transpose).
    flips: display axes to reverse after the transpose.
    spacing: display voxel size (S, P, L) in mm.
    """

    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """(Z, Y, X) array -> (S, P, L) view of it (no copy)."""
        display = np.transpose(volume, self.permutation)
        for axis, flip in enumerate(self.flips):
            if flip:
                display = np.flip(display, axis)
        return display

    def index(self, zyx: tuple[int, int, int], shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """A (z, y, x) voxel index -> its (S, P, L) display index (``shape`` is the array's)."""
        out = []
        for axis, array_axis in enumerate(self.permutation):
            value = zyx[array_axis]
            out.append(shape[array_axis] - 1 - value if self.flips[axis] else value)
        return tuple(out)


def display_frame(geometry: Geometry) -> DisplayFrame:
    """The DisplayFrame of ``geometry`` (nearest patient axis per array axis)."""
    direction = np.reshape(geometry.direction, (3, 3))
    # array axis a is index axis 2 - a (arrays are (z, y, x)); its direction is that column
    columns = [direction[:, 2 - a] for a in range(3)]
    patient_axis = [int(np.argmax(np.abs(c))) for c in columns]
    if sorted(patient_axis) != [0, 1, 2]:  # 45-degree obliques: fall back to the array order
        patient_axis = [2, 1, 0]
    permutation = tuple(patient_axis.index(2 - t) for t in range(3))
    flips = tuple(bool(columns[a][2 - t] < 0) for t, a in enumerate(permutation))
    spacing = tuple(float(geometry.spacing[a]) for a in permutation)
    return DisplayFrame(permutation, flips, spacing)


def views(display: np.ndarray, center: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The three 2D views of a (S, P, L) display volume through ``center`` (display index)."""
    s, p, l = center
    return {"axial": display[s], "coronal": display[::-1, p, :], "sagittal": display[::-1, :, l]}


def view_spacing(spacing: tuple[float, float, float]) -> dict[str, tuple[float, float]]:
    """(row, column) pixel size in mm of each view, from the display spacing (S, P, L)."""
    s, p, l = spacing
    return {"axial": (p, l), "coronal": (s, l), "sagittal": (s, p)}
