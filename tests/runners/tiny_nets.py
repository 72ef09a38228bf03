"""The small 3D networks the runner tests compile and compare (conv, instance norm, leaky ReLU, 1x1 conv)."""

from __future__ import annotations

import torch


def conv_net(in_channels: int = 1, seed: int = 0) -> torch.nn.Module:
    """A seeded Conv3d -> InstanceNorm3d -> LeakyReLU -> 1x1 Conv3d network with 3 outputs, in eval mode."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, 4, 3, padding=1),
        torch.nn.InstanceNorm3d(4, affine=True),
        torch.nn.LeakyReLU(0.01),
        torch.nn.Conv3d(4, 3, 1),
    ).eval()


def batch_and_eager(net: torch.nn.Module, shape=(2, 1, 8, 8, 8)) -> tuple[torch.Tensor, "np.ndarray"]:
    """A random batch of ``shape`` and ``net``'s eager fp32 logits for it (the reference compiled paths meet)."""
    x = torch.randn(*shape)
    with torch.no_grad():
        return x, net(x).numpy()
