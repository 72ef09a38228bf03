"""Where an image's voxels lie in space, kept in one frozen dataclass.

Conventions (the same as nnU-Net v2's SimpleITK reader):

- arrays are in (z, y, x) order, so ``shape`` and ``spacing`` are given in that order;
- ``origin`` and ``direction`` stay in SimpleITK's physical (x, y, z) convention (LPS, mm), exactly as
  read, so that a segmentation can be written back on the input's grid;
- ``direction`` is SimpleITK's row-major 3x3 matrix whose columns are the x, y, z index axes.

This module is pure: it never reads files and does not import SimpleITK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Default tolerance of :meth:`Geometry.matches` (absolute and relative, mm or direction cosine).
#: nnU-Net compares channel geometries with ``np.allclose`` (rtol 1e-5).
DEFAULT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a 3D image.

    spacing: voxel size in mm, array order (z, y, x).
    origin: physical position (mm) of voxel (0, 0, 0), SimpleITK (x, y, z).
    direction: 9 direction cosines, SimpleITK row-major (columns: x, y, z index axes).
    shape: array shape (z, y, x) in voxels.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        fields = {
            "spacing": (self.spacing, 3, float),
            "origin": (self.origin, 3, float),
            "direction": (self.direction, 9, float),
            "shape": (self.shape, 3, int),
        }
        for name, (value, length, kind) in fields.items():
            values = tuple(kind(v) for v in value)
            if len(values) != length:
                raise ValueError(f"Geometry.{name} needs {length} values, got {len(values)}: {value}")
            object.__setattr__(self, name, values)

    @classmethod
    def from_sitk(cls, image: Any) -> Geometry:
        """Geometry of a 3D ``SimpleITK.Image`` (spacing and size reversed to (z, y, x))."""
        return cls(
            spacing=tuple(abs(s) for s in reversed(image.GetSpacing())),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            shape=tuple(reversed(image.GetSize())),
        )

    @property
    def sitk_spacing(self) -> tuple[float, float, float]:
        """Spacing in SimpleITK order (x, y, z), mm."""
        z, y, x = self.spacing
        return (x, y, z)

    def lps_affine(self) -> np.ndarray:
        """4x4 float64 matrix mapping a voxel index (x, y, z, 1) to physical LPS coordinates in mm."""
        affine = np.eye(4)
        affine[:3, :3] = np.reshape(self.direction, (3, 3)) @ np.diag(self.sitk_spacing)
        affine[:3, 3] = self.origin
        return affine

    def ras_affine(self) -> np.ndarray:
        """4x4 float64 matrix mapping a voxel index (x, y, z, 1) to RAS mm (nibabel's ``affine``)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.lps_affine()

    def matches(self, other: Geometry, tol: float = DEFAULT_TOLERANCE) -> bool:
        """True when shapes are equal and spacing, origin and direction agree within ``tol``.

        ``tol`` is used as both the absolute (mm, or direction cosine) and the relative tolerance of
        ``np.allclose``.
        """
        if self.shape != other.shape:
            return False
        pairs = ((self.spacing, other.spacing), (self.origin, other.origin),
                 (self.direction, other.direction))
        return all(np.allclose(a, b, rtol=tol, atol=tol) for a, b in pairs)

    def describe(self) -> str:
        """One-line summary for messages: shape, spacing (z, y, x) and origin."""
        spacing = ", ".join(f"{s:g}" for s in self.spacing)
        origin = ", ".join(f"{o:g}" for o in self.origin)
        return f"shape {self.shape} (z, y, x), spacing ({spacing}) mm, origin ({origin})"
