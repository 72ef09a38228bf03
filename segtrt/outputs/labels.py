"""Label descriptions shared by every output: names, stable colours and coded concepts.

The label codes file (``--label-codes``) is JSON mapping a label name to its coded concepts, each a
DICOM code triplet with the attribute names DICOM uses::

    {"liver": {"category": {"CodeValue": "123037004", "CodingSchemeDesignator": "SCT",
                            "CodeMeaning": "Anatomical Structure"},
               "type":     {"CodeValue": "10200004", "CodingSchemeDesignator": "SCT",
                            "CodeMeaning": "Liver"},
               "color": [221, 130, 101]}}

'type' is required for a listed label, 'category' defaults to Anatomical Structure and 'color' (RGB
0-255) to the label's palette colour. Labels not in the file get the generic code SCT 85756007 'Tissue'
for both category and type (3D Slicer's default for a new segment).
"""

from __future__ import annotations

import colorsys
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from segtrt.errors import OutputError

logger = logging.getLogger(__name__)

Code = tuple[str, str, str]  # (CodeValue, CodingSchemeDesignator, CodeMeaning)

GENERIC_CODE: Code = ("85756007", "SCT", "Tissue")
ANATOMICAL_STRUCTURE: Code = ("123037004", "SCT", "Anatomical Structure")

#: Colours of labels 1..24 (RGB 0-255), chosen to stay apart on grey CT; later labels use golden-angle hues.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (255, 99, 71), (0, 191, 255), (154, 205, 50), (255, 0, 255), (64, 224, 208),
)


@dataclass(frozen=True)
class LabelInfo:
    """One foreground label: its value in the label map, name, RGB colour (0-255) and coded concepts."""

    value: int
    name: str
    color: tuple[int, int, int]
    category: Code = ANATOMICAL_STRUCTURE
    type: Code = GENERIC_CODE
    coded: bool = False  # True when the codes came from the label codes file

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the legend sidecar's entries)."""
        def code(c: Code) -> dict[str, str]:
            return {"CodeValue": c[0], "CodingSchemeDesignator": c[1], "CodeMeaning": c[2]}
        return {"value": self.value, "name": self.name, "color": list(self.color),
                "category": code(self.category), "type": code(self.type), "coded": self.coded}


def label_color(value: int) -> tuple[int, int, int]:
    """Stable RGB colour of label ``value`` (>= 1): the same in every case, file and format."""
    if value < 1:
        raise ValueError(f"label colours are for foreground labels >= 1, got {value}")
    if value <= len(_PALETTE):
        return _PALETTE[value - 1]
    hue = (value * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (round(red * 255), round(green * 255), round(blue * 255))


def label_names_from_dataset(dataset: Mapping[str, Any]) -> dict[int, str]:
    """Label value -> name from an nnU-Net dataset.json, background and 'ignore' left out.

    For region-based models the value of the i-th region is ``regions_class_order[i]`` (what the
    label map holds after nnU-Net's region export).
    """
    labels = {k: v for k, v in dataset["labels"].items() if k not in ("background", "ignore")}
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        order = dataset["regions_class_order"]
        return {int(value): name for name, value in zip(labels, order)}
    return {int(v): str(k) for k, v in labels.items() if int(v) != 0}


def build_label_table(label_names: Mapping[int, str], codes_path: Path | None = None) -> tuple[LabelInfo, ...]:
    """LabelInfo for each foreground label, sorted by value; codes from ``codes_path`` where listed."""
    codes = read_label_codes(codes_path) if codes_path is not None else {}
    unknown = sorted(set(codes) - set(label_names.values()))
    if unknown:
        logger.warning("label codes file %s names labels the model does not have: %s", codes_path, unknown)
    table = []
    for value in sorted(int(v) for v in label_names):
        if value <= 0:
            continue
        name = str(label_names[value])
        entry = codes.get(name)
        if entry is None:
            table.append(LabelInfo(value, name, label_color(value)))
        else:
            table.append(LabelInfo(value, name, entry.get("color", label_color(value)),
                                   entry["category"], entry["type"], coded=True))
    return tuple(table)


def read_label_codes(path: Path) -> dict[str, dict[str, Any]]:
    """Parse a label codes file (see the module docstring) into name -> {'category', 'type', 'color'}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OutputError(f"cannot read label codes file {path} ({error}); expected a JSON object") from None
    if not isinstance(raw, dict):
        raise OutputError(f"label codes file {path} holds a {type(raw).__name__}; expected an object name -> codes")
    return {str(name): _parse_entry(path, str(name), entry) for name, entry in raw.items()}


def _parse_entry(path: Path, name: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or "type" not in entry:
        raise OutputError(f"label codes file {path}: entry {name!r} has no 'type'; expected "
                          "{'type': {CodeValue, CodingSchemeDesignator, CodeMeaning}, ...}")
    parsed: dict[str, Any] = {"type": _parse_code(path, name, entry["type"]),
                              "category": _parse_code(path, name, entry.get("category"))
                              if "category" in entry else ANATOMICAL_STRUCTURE}
    if "color" in entry:
        color = entry["color"]
        if not (isinstance(color, list) and len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255
                                                                    for c in color)):
            raise OutputError(f"label codes file {path}: {name!r} color {color!r}; expected [R, G, B] in 0..255")
        parsed["color"] = tuple(color)
    return parsed


def _parse_code(path: Path, name: str, code: Any) -> Code:
    keys = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
    if not isinstance(code, dict) or not all(isinstance(code.get(k), str) and code.get(k) for k in keys):
        raise OutputError(f"label codes file {path}: {name!r} has code {code!r}; expected an object with "
                          "non-empty CodeValue, CodingSchemeDesignator and CodeMeaning")
    return (code["CodeValue"], code["CodingSchemeDesignator"], code["CodeMeaning"])
