"""NaN and infinite voxels in an input image: refused by default, replaced by 0 when asked for.

A NaN voxel does not stay local: the normalization's mean/std, the resampling and every window that
touches it turn into NaN, and an argmax over NaN logits is a plausible-looking label map (measured
on the sample CT: one NaN voxel changed thousands of labels). So segtrt refuses such an image unless
the user chose ``nonfinite="zero"`` (``--nonfinite zero``), which replaces them by 0 in a copy and
reports how many were replaced.
"""

from __future__ import annotations

import logging

import numpy as np

from segtrt.config import NONFINITE_POLICIES
from segtrt.errors import NonFiniteError, SettingsError

logger = logging.getLogger(__name__)


def apply_nonfinite_policy(image: np.ndarray, policy: str, source: str = "the image") -> tuple[np.ndarray, int]:
    """``image`` (C, Z, Y, X) as it may be predicted, and how many voxels were replaced.

    policy ``error``: NonFiniteError naming how many NaN / Inf voxels there are and where (channel and
    the (z, y, x) box holding them); ``zero``: a copy with them set to 0 (the input is never changed).
    Integer images cannot hold such values and are returned as they are, without a scan.
    """
    if policy not in NONFINITE_POLICIES:
        raise SettingsError(f"nonfinite (--nonfinite) must be one of {', '.join(NONFINITE_POLICIES)}, got {policy!r}")
    if not np.issubdtype(image.dtype, np.floating):
        return image, 0
    finite = np.isfinite(image)
    if finite.all():
        return image, 0
    bad = int(finite.size - np.count_nonzero(finite))
    if policy == "error":
        raise NonFiniteError(f"{source} has {describe_nonfinite(image, finite)}; expected finite intensities "
                             "(fix the file, or pass --nonfinite zero to predict with them set to 0)")
    logger.warning("%s: replacing %s by 0 (--nonfinite zero)", source, describe_nonfinite(image, finite))
    return np.where(finite, image, image.dtype.type(0)), bad


def describe_nonfinite(image: np.ndarray, finite: np.ndarray) -> str:
    """'3 NaN and 1 Inf voxel(s) in channel 0, within z 4-5, y 10-12, x 7-9 (array order)'."""
    nan = int(np.isnan(image).sum())
    inf = int(finite.size - np.count_nonzero(finite)) - nan
    where = np.argwhere(~finite)
    channels = sorted({int(c) for c in where[:, 0]})
    low, high = where[:, 1:].min(axis=0), where[:, 1:].max(axis=0)
    box = ", ".join(f"{axis} {lo}-{hi}" for axis, lo, hi in zip("zyx", low, high))
    return (f"{nan} NaN and {inf} Inf voxel(s) in channel(s) {', '.join(map(str, channels))}, "
            f"within {box} (array order, first voxel at {tuple(int(v) for v in where[0, 1:])})")
