"""The label legend that travels with a NIfTI label map: JSON, an ITK-SNAP label file, a Slicer colour table.

Files (``stem`` is the label map's path without '.nii.gz'):

- ``stem.labels.json``: {"labels": [{value, name, color, category, type, coded}], "model": {...}};
- ``stem.itksnap.txt``: ITK-SNAP label description file (Segmentation > Import Label Descriptions):
  one line per label ``IDX R G B A VIS MSH "LABEL"`` with A the opacity 0..1 and label 0 "Clear Label";
- ``stem.ctbl``: 3D Slicer colour table (header ``# Color table file``, then ``value name R G B A`` with
  0-255 components and spaces in names replaced by underscores); Slicer loads it as a colour node to
  assign to the label map volume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from segtrt.io.writers import atomic_write_bytes
from segtrt.outputs.labels import LabelInfo
from segtrt.outputs.options import ModelDescription


def write_legend(stem: Path, table: Sequence[LabelInfo], model: ModelDescription) -> dict[str, Path]:
    """Write the three legend files next to ``stem``; returns kind -> path ('legend', 'itksnap', 'slicer')."""
    stem = Path(stem)
    paths = {"legend": _with_suffix(stem, ".labels.json"), "itksnap": _with_suffix(stem, ".itksnap.txt"),
             "slicer": _with_suffix(stem, ".ctbl")}
    legend = {"labels": [info.as_dict() for info in table],
              "model": {"name": model.name, "identity": model.identity, "configuration": model.configuration,
                        "folds": list(model.folds), "segtrt_version": model.version}}
    atomic_write_bytes(paths["legend"], (json.dumps(legend, indent=2) + "\n").encode("utf-8"))
    atomic_write_bytes(paths["itksnap"], itksnap_label_text(table).encode("utf-8"))
    atomic_write_bytes(paths["slicer"], slicer_color_table_text(table, paths["slicer"].name).encode("utf-8"))
    return paths


def itksnap_label_text(table: Sequence[LabelInfo]) -> str:
    """ITK-SNAP label description file text for ``table`` (label 0 first, as ITK-SNAP writes it)."""
    lines = ["################################################",
             "# ITK-SnAP Label Description File",
             "# File format:",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             "# written by segtrt",
             "################################################",
             f"{0:5d} {0:5d} {0:4d} {0:4d} {0:8g} {0:2d} {0:2d}    \"Clear Label\""]
    for info in table:
        red, green, blue = info.color
        name = info.name.replace('"', "'")
        lines.append(f"{info.value:5d} {red:5d} {green:4d} {blue:4d} {1:8g} {1:2d} {1:2d}    \"{name}\"")
    return "\n".join(lines) + "\n"


def slicer_color_table_text(table: Sequence[LabelInfo], file_name: str) -> str:
    """3D Slicer colour table (.ctbl) text for ``table``, background 0 transparent."""
    lines = [f"# Color table file {file_name}", f"# {len(table) + 1} values", "0 Background 0 0 0 0"]
    for info in table:
        red, green, blue = info.color
        name = "_".join(info.name.split()) or f"label_{info.value}"
        lines.append(f"{info.value} {name} {red} {green} {blue} 255")
    return "\n".join(lines) + "\n"


def _with_suffix(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)
