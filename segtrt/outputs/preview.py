"""One PNG per case: axial, coronal and sagittal slices with the labels overlaid, a legend and the case id.

The three views cross at the foreground's centroid (each view moved to the nearest slice holding
foreground when the centroid's slice holds none; the volume's centre without foreground), shown in
radiological orientation (segtrt.outputs.orientation) with letters at the edges, at one physical scale
(square pixels of ``mm_per_pixel``, from the spacing) so shapes and sizes are true. Labels are filled
with their colour at ``ALPHA`` opacity, outlined opaque. Grey levels: a CT in HU (the first channel
holds values <= -900) uses the soft-tissue window W400/L40; other images their 1st-99th percentiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segtrt.io.geometry import Geometry
from segtrt.io.writers import atomic_path
from segtrt.outputs.labels import LabelInfo
from segtrt.outputs.orientation import VIEW_EDGES, display_frame, view_spacing, views

ALPHA = 0.4
CT_WINDOW = (-160.0, 240.0)  # W400 / L40, HU
PANEL_MAX_PIXELS = 512  # longest physical extent of the volume is drawn over this many pixels
_GAP, _MARGIN, _LETTER = 12, 10, 14
_BACKGROUND, _TEXT = (24, 24, 24), (235, 235, 235)


def render_preview(labels: np.ndarray, image: np.ndarray, geometry: Geometry, table: Sequence[LabelInfo],
                   case_id: str) -> Image.Image:
    """The preview of ``labels`` (Z, Y, X) over channel 0 of ``image`` (C, Z, Y, X) as an RGB image."""
    panels, center, shape = render_panels(labels, image, geometry, table)
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    counts = np.bincount(labels.reshape(-1), minlength=max((i.value for i in table), default=0) + 1)
    legend = [(info.color, f"{info.name}  {counts[info.value] * voxel_ml:.1f} ml") for info in table
              if counts[info.value]]
    return _compose(panels, center, shape, legend, case_id)


def render_panels(labels: np.ndarray, image: np.ndarray, geometry: Geometry, table: Sequence[LabelInfo]
                  ) -> tuple[dict[str, Image.Image], tuple[int, int, int], tuple[int, int, int]]:
    """The three overlaid views at one physical scale, the display index they cross at, the display shape."""
    frame = display_frame(geometry)
    grey = frame.apply(_grey_levels(image[0]))
    display_labels = frame.apply(labels)
    center = _center(display_labels)
    scale = max(n * s for n, s in zip(display_labels.shape, frame.spacing)) / PANEL_MAX_PIXELS  # mm per pixel
    colors = _color_lookup(table, int(labels.max(initial=0)))
    grey_views, label_views = views(grey, center), views(display_labels, center)
    panels = {}
    for name, (row_mm, column_mm) in view_spacing(frame.spacing).items():
        size = (max(1, round(grey_views[name].shape[1] * column_mm / scale)),
                max(1, round(grey_views[name].shape[0] * row_mm / scale)))
        panels[name] = _overlay(grey_views[name], label_views[name], colors, size)
    return panels, center, display_labels.shape


def write_preview(path: Path, labels: np.ndarray, image: np.ndarray, geometry: Geometry,
                  table: Sequence[LabelInfo], case_id: str) -> Path:
    """Render (see :func:`render_preview`) and write the PNG atomically to ``path``."""
    picture = render_preview(labels, image, geometry, table, case_id)
    with atomic_path(Path(path)) as temporary:
        picture.save(temporary, format="PNG", optimize=True)
    return Path(path)


def _grey_levels(channel: np.ndarray) -> np.ndarray:
    """(Z, Y, X) intensities -> uint8 grey levels (CT window or percentiles, see the module docstring)."""
    values = channel.astype(np.float32, copy=False)
    low, high = CT_WINDOW if float(values.min(initial=0)) <= -900 else np.percentile(values, (1, 99))
    high = max(float(high), float(low) + 1e-6)
    return (np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def _center(display_labels: np.ndarray) -> tuple[int, int, int]:
    """Foreground centroid (display index), each coordinate moved to the nearest slice with foreground."""
    if not display_labels.any():
        return tuple(n // 2 for n in display_labels.shape)
    center = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        counts = np.count_nonzero(display_labels, axis=others)
        centroid = float(np.dot(np.arange(counts.size), counts) / counts.sum())
        holding = np.flatnonzero(counts)
        center.append(int(holding[np.argmin(np.abs(holding - centroid))]))
    return tuple(center)


def _color_lookup(table: Sequence[LabelInfo], max_label: int) -> np.ndarray:
    lookup = np.zeros((max(max_label, max((i.value for i in table), default=0)) + 1, 3), dtype=np.float32)
    for info in table:
        lookup[info.value] = info.color
    return lookup


def _overlay(grey: np.ndarray, labels: np.ndarray, colors: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Grey view with labels blended in, resized to ``size`` (width, height): bilinear grey, nearest labels."""
    grey_big = np.asarray(Image.fromarray(np.ascontiguousarray(grey)).resize(size, Image.BILINEAR), np.float32)
    labels_big = np.asarray(Image.fromarray(np.ascontiguousarray(labels).astype(np.int32)).resize(size, Image.NEAREST))
    rgb = np.repeat(grey_big[..., None], 3, axis=2)
    inside = labels_big > 0
    color = colors[labels_big]
    rgb[inside] = (1 - ALPHA) * rgb[inside] + ALPHA * color[inside]
    edge = np.zeros_like(inside)
    edge[:-1] |= labels_big[:-1] != labels_big[1:]
    edge[1:] |= labels_big[1:] != labels_big[:-1]
    edge[:, :-1] |= labels_big[:, :-1] != labels_big[:, 1:]
    edge[:, 1:] |= labels_big[:, 1:] != labels_big[:, :-1]
    edge &= inside
    rgb[edge] = color[edge]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _layout(panels: dict[str, Image.Image]) -> dict[str, tuple[int, int]]:
    """Top-left corner of each panel: coronal stacked over sagittal right of the axial view when both
    fit in the axial view's height (thin slabs), else the three side by side. Room for edge letters."""
    axial, coronal, sagittal = panels["axial"], panels["coronal"], panels["sagittal"]
    pad, step = _LETTER + 18, _GAP + 2 * _LETTER
    if coronal.height + sagittal.height + step + 18 <= axial.height:
        right = axial.width + step
        return {"axial": (_LETTER, pad), "coronal": (right + _LETTER, pad),
                "sagittal": (right + _LETTER, pad + coronal.height + step + 18)}
    return {"axial": (_LETTER, pad), "coronal": (axial.width + step + _LETTER, pad),
            "sagittal": (axial.width + coronal.width + 2 * step + _LETTER, pad)}


def _compose(panels: dict[str, Image.Image], center: tuple[int, int, int], shape: tuple[int, int, int],
             legend: list[tuple[tuple[int, int, int], str]], case_id: str) -> Image.Image:
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    titles = {"axial": f"axial {center[0] + 1}/{shape[0]}", "coronal": f"coronal {center[1] + 1}/{shape[1]}",
              "sagittal": f"sagittal {center[2] + 1}/{shape[2]}"}
    layout = _layout(panels)
    offset = _MARGIN + 26  # below the case id
    width = max(x + panels[n].width + _LETTER for n, (x, _) in layout.items()) + 2 * _MARGIN
    bottom = max(y + panels[n].height + _LETTER for n, (_, y) in layout.items())
    legend_rows = max(1, -(-len(legend) // 3))
    canvas = Image.new("RGB", (max(width, 420), offset + bottom + 8 + legend_rows * 20 + _MARGIN), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((_MARGIN, _MARGIN), case_id, fill=_TEXT, font=font)
    for name, (x, y) in layout.items():
        x, y = x + _MARGIN, y + offset
        draw.text((x - _LETTER, y - _LETTER - 18), titles[name], fill=_TEXT, font=small)
        canvas.paste(panels[name], (x, y))
        _edge_letters(draw, VIEW_EDGES[name], (x, y, panels[name].width, panels[name].height), small)
    y = offset + bottom + 8
    column_width = (canvas.width - 2 * _MARGIN) // 3
    if not legend:
        draw.text((_MARGIN, y), "no foreground labels", fill=_TEXT, font=small)
    for index, (color, text) in enumerate(legend):
        lx, ly = _MARGIN + (index % 3) * column_width, y + (index // 3) * 20
        draw.rectangle((lx, ly + 2, lx + 12, ly + 14), fill=tuple(color))
        draw.text((lx + 18, ly), text, fill=_TEXT, font=small)
    return canvas


def _edge_letters(draw: ImageDraw.ImageDraw, letters: tuple[str, str, str, str],
                  box: tuple[int, int, int, int], font: ImageFont.FreeTypeFont) -> None:
    x, y, w, h = box
    top, bottom, left, right = letters
    draw.text((x + w // 2, y - 1), top, fill=_TEXT, font=font, anchor="md")
    draw.text((x + w // 2, y + h + 1), bottom, fill=_TEXT, font=font, anchor="ma")
    draw.text((x - 3, y + h // 2), left, fill=_TEXT, font=font, anchor="rm")
    draw.text((x + w + 3, y + h // 2), right, fill=_TEXT, font=font, anchor="lm")
