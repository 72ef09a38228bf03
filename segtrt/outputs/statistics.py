"""Per-label statistics of a case: voxel count, volume, and the input intensity inside the label.

One row per model label (also labels absent from the case, with 0 voxels and empty intensities):
``label`` (value), ``name``, ``voxels``, ``volume_ml`` (voxels x voxel volume from the spacing, mm^3 / 1000),
and ``mean``, ``std`` (population, ddof 0), ``min``, ``max`` of the first input channel (HU for CT) over
the label's voxels. Inputs with several channels add ``mean_ch<c>``, ``std_ch<c>``, ``min_ch<c>``,
``max_ch<c>`` for channels c >= 1. Sums are in float64, the deviation two-pass (no cancellation).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segtrt.io.writers import atomic_write_bytes
from segtrt.outputs.labels import LabelInfo

BASE_COLUMNS = ("label", "name", "voxels", "volume_ml", "mean", "std", "min", "max")


def label_statistics(labels: np.ndarray, image: np.ndarray, spacing: Sequence[float],
                     table: Sequence[LabelInfo]) -> list[dict[str, Any]]:
    """Rows (see the module docstring) for ``labels`` (Z, Y, X) and ``image`` (C, Z, Y, X), spacing mm."""
    if image.shape[1:] != labels.shape:
        raise ValueError(f"image {image.shape} (C, Z, Y, X) does not fit labels {labels.shape} (Z, Y, X)")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    flat = labels.reshape(-1)
    foreground = np.flatnonzero(flat)
    values = flat[foreground]
    order = np.argsort(values, kind="stable")
    sorted_labels, sorted_index = values[order], foreground[order]
    rows = []
    for info in table:
        start, stop = np.searchsorted(sorted_labels, [info.value, info.value + 1])
        row: dict[str, Any] = {"label": info.value, "name": info.name, "voxels": int(stop - start),
                               "volume_ml": float(stop - start) * voxel_ml}
        for channel in range(image.shape[0]):
            selected = image[channel].reshape(-1)[sorted_index[start:stop]]
            row.update(_intensity(selected, "" if channel == 0 else f"_ch{channel}"))
        rows.append(row)
    return rows


def _intensity(values: np.ndarray, suffix: str) -> dict[str, float | None]:
    keys = [f"{k}{suffix}" for k in ("mean", "std", "min", "max")]
    if values.size == 0:
        return dict.fromkeys(keys)
    values = values.astype(np.float64)
    mean = float(values.mean())
    std = float(np.sqrt(np.mean((values - mean) ** 2)))
    return dict(zip(keys, (mean, std, float(values.min()), float(values.max()))))


def write_case_statistics(path: Path, rows: Sequence[dict[str, Any]], case_id: str | None,
                          spacing: Sequence[float]) -> Path:
    """Write one case's rows as JSON: {"case_id", "spacing_mm" (z, y, x), "labels": rows}."""
    document = {"case_id": case_id, "spacing_mm": [float(s) for s in spacing], "labels": list(rows)}
    atomic_write_bytes(Path(path), (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return Path(path)


def statistics_csv_text(cases: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> str:
    """CSV text with a ``case_id`` column and one line per case and label; empty cells for absent values."""
    columns = ["case_id", *BASE_COLUMNS]
    for _, rows in cases:
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for case_id, rows in cases:
        for row in rows:
            writer.writerow({"case_id": case_id, **{k: _cell(v) for k, v in row.items()}})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    return value
