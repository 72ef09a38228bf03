"""Test inputs: seeded synthetic patches (``random_patches``: noise and smooth fields) and
patches cut out of a preprocessed scan (``scan_patches``), all (N, C, Z, Y, X) float32."""

from __future__ import annotations

from typing import Sequence

import torch


def random_patches(
    count: int,
    in_channels: int,
    patch_size: Sequence[int],
    *,
    batch: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """``count`` batches of (batch, in_channels, *patch_size) float32 test patches (z, y, x voxels).

    Even-numbered batches are white noise N(0, 1) (like z-scored intensities); odd ones are smooth
    fields (noise blurred over ~4 voxels, rescaled to mean 0 / std 1, plus a bright blob), which
    give the network image-like structure. Deterministic for a seed.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, in_channels, *[int(s) for s in patch_size])
    out = []
    for i in range(count):
        noise = torch.randn(shape, generator=gen)
        out.append((noise if i % 2 == 0 else _smooth_field(noise)).to(device))
    return out


def _smooth_field(noise: torch.Tensor) -> torch.Tensor:
    """Noise blurred with three passes of a box filter (up to 9 voxels wide, ~Gaussian with sigma
    ~4.5 voxels), z-scored, plus a bright ball in the middle; same shape as ``noise``."""
    n, c = noise.shape[:2]
    size = min(noise.shape[2:])
    k = max(1, min(9, size if size % 2 else size - 1))
    x = noise.reshape(n * c, 1, *noise.shape[2:])
    for _ in range(3):
        x = torch.nn.functional.avg_pool3d(x, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)
    x = (x - x.mean()) / x.std().clamp_min(1e-6)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in noise.shape[2:]], indexing="ij")
    ball = (sum(g**2 for g in grids) < 0.25).float() * 3.0
    return (x + ball).reshape(noise.shape)


def scan_patches(data: torch.Tensor, patch_size: Sequence[int], count: int, *, seed: int = 0) -> list[torch.Tensor]:
    """``count`` (1, C, Z, Y, X) patches from a preprocessed scan ``data`` (C, z, y, x), on its device.

    The scan is zero-padded (centred, as nnU-Net's sliding window does in normalized space) to at
    least the patch size; the first patch is the centre one, the others are at seeded random
    positions. Returns views into the padded scan.
    """
    patch = [int(p) for p in patch_size]
    pads = [max(p - s, 0) for p, s in zip(patch, data.shape[1:])]
    flat = []
    for pad in reversed(pads):  # torch.nn.functional.pad wants the last axis first
        flat += [pad // 2, pad - pad // 2]
    padded = torch.nn.functional.pad(data, flat) if any(pads) else data
    room = [s - p for s, p in zip(padded.shape[1:], patch)]
    gen = torch.Generator().manual_seed(seed)
    starts = [[r // 2 for r in room]]
    while len(starts) < count:
        starts.append([int(torch.randint(0, r + 1, (1,), generator=gen)) for r in room])
    return [padded[None, :, z:z + patch[0], y:y + patch[1], x:x + patch[2]] for z, y, x in starts[:count]]
