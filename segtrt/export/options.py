"""What an export is asked for: the graph's I/O names, ``ExportOptions`` and the checks of the
requested geometry (patch size in voxels, the network's total stride per axis (z, y, x))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from segtrt.errors import ExportError

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp32", "fp16")
AXES = ("z", "y", "x")


@dataclass(frozen=True)
class ExportOptions:
    """How a graph is exported. batch: static batch size (ignored when dynamic_batch).
    opset: ONNX opset (None: the exporter's default, recorded in the result and metadata).
    norm_precision: in fp16 graphs, the precision of the normalization layers ("fp32", the
    default, see segtrt.onnx_fp16; "fp16" makes the graph half precision throughout)."""

    batch: int = 1
    dynamic_batch: bool = False
    dynamic_spatial: bool = False
    precision: str = "fp32"
    opset: int | None = None
    norm_precision: str = "fp32"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision must be fp32 or fp16, got {self.precision!r}")
        if self.norm_precision not in PRECISIONS:
            raise ExportError(f"norm_precision must be fp32 or fp16, got {self.norm_precision!r}")
        if not self.dynamic_batch and (not isinstance(self.batch, int) or self.batch < 1):
            raise ExportError(f"batch must be a positive integer, got {self.batch!r}; or use a dynamic batch")
        if self.opset is not None and self.opset < 17:
            raise ExportError(f"opset {self.opset} is too old: segtrt exports opset 17 or newer")


def network_total_stride(network: nn.Module) -> tuple[int, int, int] | None:
    """Per-axis (z, y, x) product of the encoder's stage strides of a dynamic-network-architectures
    U-Net (``network.encoder.strides``); None when the network does not expose them."""
    strides = getattr(getattr(network, "encoder", None), "strides", None)
    if not strides:
        return None
    total = [1, 1, 1]
    for stage in strides:
        per_axis = [stage] * 3 if isinstance(stage, int) else list(stage)
        if len(per_axis) != 3:
            return None
        total = [t * int(s) for t, s in zip(total, per_axis)]
    return (total[0], total[1], total[2])


def resolve_total_stride(network: nn.Module, given: Sequence[int] | None, *, required: bool) -> tuple[int, int, int] | None:
    stride = tuple(int(s) for s in given) if given is not None else network_total_stride(network)
    if stride is not None and (len(stride) != 3 or min(stride) < 1):
        raise ExportError(f"total_stride must be three positive integers (z, y, x), got {given!r}")
    if stride is None and required:
        raise ExportError(
            f"dynamic spatial axes need the network's total stride, which {type(network).__name__} does not "
            "expose as encoder.strides; pass total_stride=(sz, sy, sx)"
        )
    return stride  # type: ignore[return-value]


def check_multiple(patch: tuple[int, int, int], stride: tuple[int, int, int] | None) -> None:
    if stride is not None and any(p % s for p, s in zip(patch, stride)):
        raise ExportError(
            f"patch size {patch} is not a multiple of the network's total stride {stride} (z, y, x); "
            "dynamic spatial axes need multiples of the stride"
        )


def patch_triple(patch_size: Sequence[int]) -> tuple[int, int, int]:
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ExportError(f"patch_size must be three positive voxel counts (z, y, x), got {tuple(patch_size)!r}")
    return (patch[0], patch[1], patch[2])
