"""nnU-Net v2's DefaultPreprocessor on torch tensors: transpose -> crop to nonzero -> normalize -> resample.

Array order is (C, Z, Y, X) with the image's SimpleITK spacing reversed to (z, y, x) mm. Everything runs
on the input tensor's device; the only host round trips are the few scalars that decide shapes (the
crop box, masked statistics, the hole-filling convergence test).

The plan (:class:`PreprocessPlan`) holds what preprocessing and export need from ``plans.json``; it is
built from already-parsed dicts and never reads files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from segtrt.errors import InputImageError, ModelFolderError
from segtrt.resample import (ANISOTROPY_THRESHOLD, SPLINE_ORDERS, TORCH_MODES, ResamplingSpec,
                             compute_new_shape)

logger = logging.getLogger(__name__)

#: nnU-Net normalization class names segtrt implements.
NORMALIZATION_SCHEMES = ("CTNormalization", "ZScoreNormalization", "NoNormalization",
                         "RescaleTo01Normalization", "RGBTo01Normalization")
#: nnU-Net resampling function name -> ResamplingSpec.method, with the keyword arguments it accepts
#: and the function's own defaults (used when plans.json leaves a keyword out).
_RESAMPLING_FUNCTIONS: dict[str, tuple[str, dict[str, object]]] = {
    "resample_data_or_seg_to_shape": ("spline", {
        "is_seg": False, "order": 3, "order_z": 0, "force_separate_z": False,
        "separate_z_anisotropy_threshold": ANISOTROPY_THRESHOLD}),
    "resample_torch_fornnunet": ("torch", {
        "is_seg": False, "num_threads": 4, "device": None, "memefficient_seg_resampling": False,
        "force_separate_z": None, "separate_z_anisotropy_threshold": ANISOTROPY_THRESHOLD,
        "mode": "linear", "aniso_axis_mode": "nearest-exact"}),
    "no_resampling_hack": ("none", {}),
}
_EPS = 1e-8  # nnU-Net's lower bound on a standard deviation (float32 target)


@dataclass(frozen=True)
class ChannelIntensity:
    """Foreground intensity statistics of one input channel (plans.json), in the image's units."""

    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class PreprocessPlan:
    """What preprocessing and export need from one nnU-Net configuration.

    transpose_forward / transpose_backward: axis permutations of (z, y, x) into / out of network order.
    target_spacing: network spacing in mm after transpose_forward; 2 entries (in-plane) for 2D
        configurations, whose first axis keeps the image's own spacing.
    normalization_schemes, use_mask_for_norm, intensity_properties: one entry per input channel
        (intensity_properties is None for channels plans.json gives no statistics for).
    data_resampling / probabilities_resampling: image resampling and export (logit) resampling.
    """

    transpose_forward: tuple[int, int, int]
    transpose_backward: tuple[int, int, int]
    target_spacing: tuple[float, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: tuple[ChannelIntensity | None, ...]
    data_resampling: ResamplingSpec
    probabilities_resampling: ResamplingSpec

    @property
    def num_channels(self) -> int:
        """Number of input channels the configuration expects."""
        return len(self.normalization_schemes)

    @property
    def needs_nonzero_mask(self) -> bool:
        """True when a channel normalizes inside the (hole-filled) nonzero mask."""
        return any(s == "ZScoreNormalization" and m
                   for s, m in zip(self.normalization_schemes, self.use_mask_for_norm))

    def network_spacing(self, spacing_transposed: Sequence[float]) -> tuple[float, float, float]:
        """3-D network spacing (mm) for an image of ``spacing_transposed`` (2D configs keep axis 0)."""
        if len(self.target_spacing) == 2:
            return (float(spacing_transposed[0]), *self.target_spacing)  # type: ignore[return-value]
        return self.target_spacing  # type: ignore[return-value]

    @classmethod
    def from_nnunet(cls, plans: Mapping, configuration: Mapping) -> PreprocessPlan:
        """Build from parsed ``plans.json`` and one of its configurations (``inherits_from`` resolved).

        Raises ModelFolderError for missing keys, unsupported normalization schemes or resampling
        functions.
        """
        forward = _permutation(plans, "transpose_forward")
        backward = _permutation(plans, "transpose_backward")
        if tuple(forward[i] for i in backward) != (0, 1, 2):
            raise ModelFolderError(f"plans.json transpose_backward {list(backward)} does not undo "
                                   f"transpose_forward {list(forward)}; re-export the model folder")
        schemes = tuple(str(s) for s in _require(configuration, "normalization_schemes"))
        use_mask = tuple(bool(m) for m in _require(configuration, "use_mask_for_norm"))
        if len(schemes) != len(use_mask) or not schemes:
            raise ModelFolderError(f"plans.json has {len(schemes)} normalization_schemes and "
                                   f"{len(use_mask)} use_mask_for_norm entries; expected one per channel")
        for channel, scheme in enumerate(schemes):
            if scheme not in NORMALIZATION_SCHEMES:
                raise ModelFolderError(f"plans.json normalizes channel {channel} with {scheme!r}; segtrt "
                                       f"supports {', '.join(NORMALIZATION_SCHEMES)}")
        return cls(transpose_forward=forward, transpose_backward=backward,
                   target_spacing=_spacing(configuration),
                   normalization_schemes=schemes, use_mask_for_norm=use_mask,
                   intensity_properties=_intensities(plans, schemes),
                   data_resampling=_resampling(configuration, "resampling_fn_data"),
                   probabilities_resampling=_resampling(configuration, "resampling_fn_probabilities"))


def _require(mapping: Mapping, key: str) -> object:
    if key not in mapping:
        raise ModelFolderError(f"plans.json lacks {key!r}; expected an nnU-Net v2 plans file")
    return mapping[key]


def _permutation(plans: Mapping, key: str) -> tuple[int, int, int]:
    value = _require(plans, key)
    if not isinstance(value, (list, tuple)) or sorted(int(v) for v in value) != [0, 1, 2]:
        raise ModelFolderError(f"plans.json {key} is {value!r}; expected a permutation of [0, 1, 2]")
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def _spacing(configuration: Mapping) -> tuple[float, ...]:
    value = _require(configuration, "spacing")
    spacing = tuple(float(v) for v in value)  # type: ignore[union-attr]
    if len(spacing) not in (2, 3) or min(spacing) <= 0:
        raise ModelFolderError(f"plans.json spacing is {value!r}; expected 2 or 3 positive values (mm)")
    return spacing


def _intensities(plans: Mapping, schemes: tuple[str, ...]) -> tuple[ChannelIntensity | None, ...]:
    table = plans.get("foreground_intensity_properties_per_channel",
                      plans.get("foreground_intensity_properties_by_modality", {}))
    out: list[ChannelIntensity | None] = []
    for channel, scheme in enumerate(schemes):
        entry = table.get(str(channel))
        try:
            out.append(None if entry is None else ChannelIntensity(
                mean=float(entry["mean"]), std=float(entry["std"]),
                percentile_00_5=float(entry["percentile_00_5"]),
                percentile_99_5=float(entry["percentile_99_5"])))
        except (KeyError, TypeError, ValueError):
            out.append(None)
        if scheme == "CTNormalization" and out[-1] is None:
            raise ModelFolderError(f"plans.json foreground_intensity_properties_per_channel lacks mean, std "
                                   f"and percentiles for channel {channel}, which CTNormalization needs")
    return tuple(out)


def _resampling(configuration: Mapping, key: str) -> ResamplingSpec:
    name = _require(configuration, key)
    if name not in _RESAMPLING_FUNCTIONS:
        raise ModelFolderError(f"plans.json {key} is {name!r}; segtrt supports "
                               f"{', '.join(_RESAMPLING_FUNCTIONS)}")
    method, defaults = _RESAMPLING_FUNCTIONS[name]  # type: ignore[index]
    given = dict(configuration.get(f"{key}_kwargs") or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ModelFolderError(f"plans.json {key}_kwargs has {unknown} that {name} does not take")
    kwargs = {**defaults, **given}
    if kwargs.get("is_seg"):
        raise ModelFolderError(f"plans.json {key}_kwargs sets is_seg=True; expected image/logit resampling")
    if method == "none":
        return ResamplingSpec(method="none")
    threshold = kwargs["separate_z_anisotropy_threshold"]
    spec = ResamplingSpec(method=method, order=int(kwargs.get("order", 3)),  # type: ignore[call-overload]
                          order_z=int(kwargs.get("order_z", 0)),  # type: ignore[call-overload]
                          force_separate_z=kwargs["force_separate_z"],  # type: ignore[arg-type]
                          anisotropy_threshold=float(threshold),  # type: ignore[arg-type]
                          mode=str(kwargs.get("mode", "linear")),
                          aniso_axis_mode=str(kwargs.get("aniso_axis_mode", "nearest-exact")))
    _check_spec(spec, key)
    return spec


def _check_spec(spec: ResamplingSpec, key: str) -> None:
    if spec.force_separate_z not in (None, True, False):
        raise ModelFolderError(f"plans.json {key}_kwargs force_separate_z is {spec.force_separate_z!r}; "
                               "expected null, true or false")
    if spec.order not in SPLINE_ORDERS or spec.order_z not in SPLINE_ORDERS:
        raise ModelFolderError(f"plans.json {key}_kwargs asks for spline orders {spec.order}/{spec.order_z}; "
                               f"expected values in {list(SPLINE_ORDERS)}")
    for mode in (spec.mode, spec.aniso_axis_mode):
        if mode not in TORCH_MODES:
            raise ModelFolderError(f"plans.json {key}_kwargs uses interpolation mode {mode!r}; segtrt "
                                   f"supports {', '.join(TORCH_MODES)}")


@dataclass
class Preprocessed:
    """A preprocessed case: network input plus the geometry export needs to undo it.

    data: (C, z, y, x) float32 on the device, network order and spacing.
    shape / spacing: the input's (Z, Y, X) voxels and (z, y, x) mm, in input array order.
    spacing_transposed: input spacing after transpose_forward (mm).
    network_spacing: spacing of ``data`` (mm).
    shape_before_cropping: input shape after transpose_forward (voxels).
    bbox: crop box in transposed order, ((start, stop), ...) half-open voxel indices.
    shape_after_cropping: cropped shape, before resampling (voxels).
    """

    data: torch.Tensor
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    spacing_transposed: tuple[float, float, float]
    network_spacing: tuple[float, float, float]
    shape_before_cropping: tuple[int, int, int]
    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    shape_after_cropping: tuple[int, int, int]

    def crop_slices(self) -> tuple[slice, slice, slice]:
        """Slices selecting the crop box in transposed order."""
        return tuple(slice(a, b) for a, b in self.bbox)  # type: ignore[return-value]


def preprocess(image: torch.Tensor, spacing: Sequence[float], plan: PreprocessPlan) -> Preprocessed:
    """Run nnU-Net's DefaultPreprocessor on ``image`` (C, Z, Y, X), spacing (z, y, x) mm.

    The result lives on ``image.device``; the input is not modified.
    """
    spacing = _check_input(image, spacing, plan)
    order = [0, *(a + 1 for a in plan.transpose_forward)]
    data = image.float().permute(order)  # nnU-Net casts to float32 before looking for nonzero voxels
    spacing_t = tuple(spacing[a] for a in plan.transpose_forward)
    nonzero = (data != 0).any(dim=0)
    bbox = nonzero_bbox(nonzero)
    crop = tuple(slice(a, b) for a, b in bbox)
    data = data[(slice(None), *crop)].to(dtype=torch.float32, memory_format=torch.contiguous_format,
                                        copy=True)
    mask = fill_holes(nonzero[crop]) if plan.needs_nonzero_mask else None
    normalize_(data, plan, mask)
    net_spacing = plan.network_spacing(spacing_t)
    new_shape = compute_new_shape(data.shape[1:], spacing_t, net_spacing)
    cropped_shape = tuple(data.shape[1:])
    data = plan.data_resampling.apply(data, new_shape, spacing_t, net_spacing).float()
    logger.debug("preprocessed %s -> crop %s -> %s at %s mm", tuple(image.shape[1:]), bbox,
                 tuple(data.shape[1:]), net_spacing)
    return Preprocessed(data=data, shape=tuple(image.shape[1:]), spacing=spacing,
                        spacing_transposed=spacing_t, network_spacing=net_spacing,
                        shape_before_cropping=tuple(nonzero.shape), bbox=bbox,
                        shape_after_cropping=cropped_shape)  # type: ignore[arg-type]


def _check_input(image: torch.Tensor, spacing: Sequence[float], plan: PreprocessPlan) -> tuple[float, ...]:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputImageError(f"received an image of shape {shape}; expected a (C, Z, Y, X) tensor")
    if image.shape[0] != plan.num_channels:
        raise InputImageError(f"received {image.shape[0]} channel(s); the model expects "
                              f"{plan.num_channels} (one file per channel, as in dataset.json)")
    if image.is_complex() or image.dtype == torch.bool:
        raise InputImageError(f"received image dtype {image.dtype}; expected real intensity values")
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(s > 0 for s in values):
        raise InputImageError(f"received spacing {tuple(spacing)}; expected 3 positive values "
                              "(z, y, x) in mm")
    return values


def nonzero_bbox(mask: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """Half-open box ((start, stop) per axis) around the True voxels of ``mask``; the whole array
    when it has none (as nnU-Net's ``get_bbox_from_mask``)."""
    box = []
    for dim in range(mask.ndim):
        others = tuple(d for d in range(mask.ndim) if d != dim)
        hits = torch.nonzero(mask.any(dim=others) if others else mask).flatten()
        if hits.numel() == 0:
            return tuple((0, n) for n in mask.shape)
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """``scipy.ndimage.binary_fill_holes`` (6-connected background) on the mask's device.

    Background reachable from the array border stays False; enclosed background becomes True. The
    reachable set grows by whole background runs along z, y and x in turn (segmented boolean scans,
    log2(n) steps each) until it stops changing.
    """
    free = ~mask
    outside = torch.zeros_like(mask)
    for dim in range(mask.ndim):
        for index in (0, mask.shape[dim] - 1):
            outside.select(dim, index).copy_(free.select(dim, index))
    sweeps = 0
    while True:
        before = outside
        for dim in range(mask.ndim):
            outside = _spread_along(outside, free, dim)
        sweeps += 1
        if torch.equal(before, outside):
            break
    logger.debug("fill_holes converged after %d sweeps", sweeps)
    return ~outside


def _spread_along(seeds: torch.Tensor, free: torch.Tensor, dim: int) -> torch.Tensor:
    """Mark every ``free`` voxel whose run of free voxels along ``dim`` holds a seed."""
    return _scan(seeds, free, dim) | _scan(seeds.flip(dim), free.flip(dim), dim).flip(dim)


def _scan(seeds: torch.Tensor, free: torch.Tensor, dim: int) -> torch.Tensor:
    """Forward segmented OR-scan: out[i] = exists j <= i, seeds[j], free[j..i] all True."""
    reached = seeds & free
    clear = free.clone()  # clear[i]: free[i - step + 1 .. i] all True
    n, step = free.shape[dim], 1
    while step < n:
        head, tail = reached.narrow(dim, step, n - step), reached.narrow(dim, 0, n - step)
        gain = clear.narrow(dim, step, n - step) & tail
        widened = clear.narrow(dim, step, n - step) & clear.narrow(dim, 0, n - step)
        head |= gain
        clear.narrow(dim, step, n - step).copy_(widened)
        step *= 2
    return reached


def normalize_(data: torch.Tensor, plan: PreprocessPlan, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalize ``data`` (C, Z, Y, X) float32 in place, channel by channel, as nnU-Net does.

    mask: hole-filled nonzero mask (Z, Y, X), needed by ZScoreNormalization with use_mask_for_norm.
    """
    for c, scheme in enumerate(plan.normalization_schemes):
        x = data[c]
        if scheme == "CTNormalization":
            props = plan.intensity_properties[c]
            x.clamp_(props.percentile_00_5, props.percentile_99_5).sub_(props.mean)
            x.div_(max(props.std, _EPS))
        elif scheme == "ZScoreNormalization":
            _zscore_(x, mask if plan.use_mask_for_norm[c] else None)
        elif scheme == "RescaleTo01Normalization":
            x.sub_(x.min())
            x.div_(max(float(x.max()), _EPS))
        elif scheme == "RGBTo01Normalization":
            if float(x.min()) < 0 or float(x.max()) > 255:
                raise InputImageError(f"channel {c} has values outside [0, 255]; RGBTo01Normalization "
                                      "expects 8-bit RGB images")
            x.div_(255.0)
    return data


def _zscore_(x: torch.Tensor, mask: torch.Tensor | None) -> None:
    """(x - mean) / max(std, 1e-8) with population statistics, inside ``mask`` only when given."""
    values = x if mask is None else x[mask]
    if values.numel() == 0:
        return  # nnU-Net leaves an empty mask untouched (its statistics are NaN and nothing is written)
    mean = float(values.sum(dtype=torch.float64)) / values.numel()
    var = float((values - mean).square().sum(dtype=torch.float64)) / values.numel()
    std = max(var ** 0.5, _EPS)
    if mask is None:
        x.sub_(mean).div_(std)
    else:
        x.copy_(torch.where(mask, (x - mean) / std, x))
