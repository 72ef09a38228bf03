"""Half-precision networks with float32 edges, for an fp16 ONNX graph that TensorRT 11 accepts.

TensorRT 11 is strongly typed: there is no builder FP16 flag, the precision of every layer is the
type the graph gives it. So segtrt's fp16 export is a graph that carries fp16 itself: a copy of the
network converted to half, with a Cast at the input (float32 -> float16) and at the output
(float16 -> float32), and the modules in ``keep_fp32`` computed in float32 between two Casts. The
graph's I/O stays float32, so every runner and the sliding-window predictor see the same
(N, C, Z, Y, X) float32 -> (N, K, Z, Y, X) float32 contract at both precisions.

Which ops stay float32: instance normalization (and the other norm types in DEFAULT_KEEP_FP32).
Its mean and variance are reductions over a whole patch (up to 128^3 = 2.1 M voxels per channel)
and the ONNX spec leaves their accumulation precision to the runtime. TensorRT-RTX 1.7 has no
per-layer compute-precision setting in strongly typed networks, so an fp16 InstanceNormalization
would run with whatever internal precision its kernel picks; with the statistics in float32 the
graph says exactly what runs, on every runtime. Everything else (Conv, ConvTranspose, LeakyRelu,
Concat, Add, AveragePool) runs in fp16.

MEASUREMENTS (2026-11-22; torch 2.11 + cuDNN on an H100 for GPU fp16 arithmetic, ONNX Runtime 1.31
CPU here). Networks: 5-stage PlainConvUNet and ResidualEncoderUNet (features 16-192, InstanceNorm +
LeakyReLU, 6 classes, patch 32x96x96), untrained (He init) and trained for 400 iterations on a
real abdominal CT (|logits| up to 56-142). Patches: N(0,1) noise, smooth fields, CT crops from the
training scan, crops of another CT series, smooth x30 (overflow stress). Reference: the same
network in float32 with TF32 off (agrees with float64 to 5e-6). "rel" = max|diff| / max|ref|:

    variant (GPU)                        trained nets, all patches        untrained nets
                                         max rel    mean rel   argmax    max rel   argmax
    half network, norm in fp32 (ours)    1.03e-2    1.7e-3     0.9978    4.6e-3    0.9971
    half network, norm in fp16           1.01e-2    1.7e-3     0.9978    4.6e-3    0.9972
    torch autocast fp16 (nnU-Net's way)  1.04e-2    1.2e-3     0.9985    4.5e-3    0.9972
    fp32 with TF32 (torch's default)     2.4e-3     3.2e-4     0.9997    2.9e-3    0.9983

  (argmax: worst raw agreement over all voxels; the lowest values come from the other CT series
  and noise, on which the barely trained nets are unsure; on CT crops of the training scan the
  fp16 agreement is >= 0.9998. On "decided" voxels, whose top-1 minus top-2 logit is >= 1% of
  max|ref| (61-96% of the voxels), every variant agrees on 100%.) No variant produced inf/NaN,
  also at x30 input. The exported graphs on ONNX Runtime 1.31's CUDA provider (H100, trained nets,
  noise/smooth/CT patches): fp32 max rel 7.6e-7; fp16 max rel 1.04e-2 (plain) and 1.1e-3
  (residual), raw argmax agreement 0.99947 / 0.99973, decided 1.0. On the GPU the
  norm's precision does not change the error (torch accumulates fp16 norms in fp32 anyway), and
  it is faster to keep it in fp32: nnU-Net's default 6-stage U-Net at 128^3, batch 2, eager
  torch: 12.5 ms/patch with float32 norms vs 15.9 ms with fp16 norms (autocast 11.3, fp32+TF32
  15.1). ONNX Runtime's CPU provider gives the same numbers for both graphs (it has no fp16
  InstanceNormalization kernel and inserts the casts itself): on the 4-stage test nets max rel
  5.8e-4; on the trained 5-stage nets 8.2e-3 (plain) and 1.2e-3 (residual). Both graphs parse and
  build with TensorRT-RTX 1.7 on a CPU-only machine (strongly typed network; NORMALIZATION layers
  come out FLOAT, convolutions HALF). segtrt.verify.TOLERANCES["fp16"] is set from these numbers.

  Open speed question: on ONNX Runtime's CUDA provider the float32 norms cost time, because it runs
  each Cast as its own kernel. 5-stage test nets at 32x96x96, ms per patch at batch 1 / 2 / 4:
  plain fp16 graph 8.9 / 7.2 / 6.4 vs fp32 graph 4.7 / 4.0 / 3.4; residual 15.3 / 10.9 / 8.9 vs
  7.2 / 5.6 / 4.7 (small nets, launch-bound; not measured at nnU-Net's default size).
  ``segtrt.export``'s ``norm_precision="fp16"`` drops those Casts (same accuracy everywhere it
  was measured). TensorRT fuses casts into neighbouring kernels; its speed could not be measured
  here (TensorRT-RTX does not run on Hopper GPUs, full TensorRT does not install).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

#: Module types computed in float32 inside an fp16 network (see the module docstring).
DEFAULT_KEEP_FP32: tuple[type[nn.Module], ...] = (
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.BatchNorm3d,
)


class Float32Island(nn.Module):
    """Runs ``module`` (kept in float32) on a float32 copy of its input; returns the input's dtype."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


class HalfPrecisionNetwork(nn.Module):
    """A half copy of ``network`` with float32 input and output.

    forward: (N, C, Z, Y, X) float32 -> (N, K, Z, Y, X) float32; inside, everything runs in
    float16 except the modules whose type is in ``keep_fp32`` (float32, see ``Float32Island``).
    The caller's ``network`` is not modified.
    """

    def __init__(self, network: nn.Module, keep_fp32: Sequence[type[nn.Module]] = DEFAULT_KEEP_FP32) -> None:
        super().__init__()
        half = copy.deepcopy(network).eval()
        _wrap_in_place(half, tuple(keep_fp32))
        half.half()
        for island in half.modules():
            if isinstance(island, Float32Island):
                island.module.float()
        self.network = half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.half()).float()


def _wrap_in_place(
    module: nn.Module, keep_fp32: tuple[type[nn.Module], ...], islands: dict[int, Float32Island] | None = None
) -> None:
    """Replaces every child whose type is in ``keep_fp32`` by a ``Float32Island`` around it.

    A module reachable under two names (dynamic-network-architectures registers each norm both as
    ``.norm`` and inside ``.all_modules``) gets one island, shared by both.
    """
    if not keep_fp32:
        return
    islands = {} if islands is None else islands
    for name, child in list(module.named_children()):
        if isinstance(child, keep_fp32):
            if id(child) not in islands:
                islands[id(child)] = Float32Island(child)
            setattr(module, name, islands[id(child)])
        elif not isinstance(child, Float32Island):
            _wrap_in_place(child, keep_fp32, islands)


def count_float32_islands(module: nn.Module) -> int:
    """How many modules of ``module`` run in float32 inside a half network."""
    return sum(isinstance(m, Float32Island) for m in module.modules())
