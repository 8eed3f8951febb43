"""Feature fusion across backbone stages.

* :class:`MultiScaleExchange`: HRNet's exchange unit (Wang et al., "Deep High-Resolution Representation
  Learning", TPAMI 2020, Sec. 3 "Exchange unit"): output scale ``i`` is ``relu(sum_j f_ij(x_j))`` with
  ``f_ii`` the identity, ``f_ij`` for a coarser ``j`` a 1x1 conv + BN followed by upsampling, and for a finer
  ``j`` a chain of strided 3x3 conv + BN (ReLU between them), one per factor 2. msma's variant
  ``msma_spatial`` fuses ResNet stages 2-4 this way (all outputs from the unfused inputs); the authors' MSMA
  fuses four branches in place instead (:mod:`msma.models.msma`).
* :class:`AFF`: MLANet's AFF as its public code builds it (``models/attention.py``, class ``AFF``): both
  branches end in BatchNorm (also the global one, on 1x1 maps) and the output is ``2 x w + 2 y (1 - w)``.
* :class:`AttentionalFeatureFusion`: msma's variant of AFF (used by ``mlanet_timm``) with the multi-scale
  channel attention module MS-CAM (Dai et al., "Attentional Feature Fusion", WACV 2021, Eq. 1-4):
  ``Z = M(X + Y) * X + (1 - M(X + Y)) * Y`` where ``M = sigmoid(local(.) + global(.))``, both bottleneck 1x1
  conv branches with channel reduction ``r`` (MLANet: r = 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AFF", "MultiScaleExchange", "AttentionalFeatureFusion", "MSCAM", "conv_bn_act", "resize_to"]


def conv_bn_act(in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU), 'same' padding for odd kernels."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, *size); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _Downsample(nn.Sequential):
    """``steps`` strided 3x3 conv+BN (ReLU between), ``in_ch`` -> ``out_ch`` on the last."""

    def __init__(self, in_ch: int, out_ch: int, steps: int) -> None:
        layers: list[nn.Module] = []
        for s in range(steps):
            last = s == steps - 1
            layers.append(conv_bn_act(in_ch, out_ch if last else in_ch, 3, stride=2, act=not last))
        super().__init__(*layers)


class MultiScaleExchange(nn.Module):
    """HRNet-style exchange between feature maps of different resolutions.

    Args:
        channels: channels of each input scale, finest first.
        reductions: stride of each input scale (e.g. 8, 16, 32); consecutive ratios must be powers of two.
        out_scales: indices of the scales to output (default all); only those fusions are built.

    Input: one (B, channels[j], H_j, W_j) map per scale. Output: one (B, channels[i], H_i, W_i) map per
    ``out_scales`` entry, ``relu(sum_j f_ij(x_j))``.
    """

    def __init__(
        self, channels: Sequence[int], reductions: Sequence[int], out_scales: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        if len(channels) != len(reductions) or not channels:
            raise ValueError(f"channels {list(channels)} and reductions {list(reductions)} must match and be non-empty")
        self.channels = tuple(channels)
        self.out_scales = tuple(range(len(channels))) if out_scales is None else tuple(out_scales)
        self.paths = nn.ModuleList()
        for i in self.out_scales:
            row = nn.ModuleList()
            for j in range(len(channels)):
                ratio = reductions[j] / reductions[i]
                steps = round(math.log2(ratio)) if ratio > 0 else 0
                if ratio <= 0 or 2.0**steps != ratio:
                    raise ValueError(f"scale strides {list(reductions)} are not related by powers of two")
                if j == i:
                    row.append(nn.Identity())
                elif steps >= 0:  # coarser (or equal-stride) input: project, then upsample
                    row.append(conv_bn_act(channels[j], channels[i], 1, act=False))
                else:  # finer input: strided convs
                    row.append(_Downsample(channels[j], channels[i], -steps))
            self.paths.append(row)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """xs: per-scale maps (finest first) -> fused maps for ``out_scales``."""
        if len(xs) != len(self.channels):
            raise ValueError(f"MultiScaleExchange expects {len(self.channels)} scales, got {len(xs)}")
        outs = []
        for i, row in zip(self.out_scales, self.paths):
            size = (int(xs[i].shape[-2]), int(xs[i].shape[-1]))
            total = xs[i]
            paths: nn.ModuleList = row  # type: ignore[assignment]
            for j, path in enumerate(paths):
                if j != i:
                    total = total + resize_to(path(xs[j]), size)
            outs.append(F.relu(total))
        return outs


class MSCAM(nn.Module):
    """Multi-scale channel attention (AFF paper, Fig. 2): ``sigmoid(L(x) + G(x))``, (B, C, H, W) -> same shape.

    ``L`` is a pointwise bottleneck (C -> C/r -> C, BN, ReLU) at every pixel, ``G`` the same after global
    average pooling (broadcast back).
    """

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        mid = max(1, channels // r)
        self.local = nn.Sequential(conv_bn_act(channels, mid, 1), conv_bn_act(mid, channels, 1, act=False))
        self.glob = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, mid, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> attention weights in (0, 1), (B, C, H, W)."""
        return torch.sigmoid(self.local(x) + self.glob(x))


class AttentionalFeatureFusion(nn.Module):
    """AFF: ``Z = M(X + Y) * X + (1 - M(X + Y)) * Y`` for two (B, C, H, W) maps of equal shape.

    The global branch uses no BatchNorm (it runs on 1x1 maps, where batch statistics of size-1 batches are
    undefined); the local branch uses BN as in the paper.
    """

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        self.attention = MSCAM(channels, r)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y: (B, C, H, W) -> (B, C, H, W)."""
        if x.shape != y.shape:
            raise ValueError(f"AFF inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        w = self.attention(x + y)
        return w * x + (1.0 - w) * y


class AFF(nn.Module):
    """Attentional feature fusion as in MLANet's public code (``models/attention.py``, ``AFF``; r = 4).

    ``w = sigmoid(L(x + y) + G(x + y))``, output ``2 x w + 2 y (1 - w)``. ``L``: 1x1 conv (C -> C / r, bias) ->
    BN -> ReLU -> 1x1 conv (-> C, bias) -> BN at every pixel; ``G``: the same after global average pooling (its
    BatchNorms see (B, C, 1, 1) maps: training needs a batch of at least 2). Sub-module names ``local_att`` /
    ``global_att`` with the same indices as the reference, so checkpoints map by name.

    Args:
        channels: C of both inputs.
        r: channel reduction (inter width ``C // r``).
    """

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        inter = int(channels // r)
        self.local_att = nn.Sequential(
            nn.Conv2d(channels, inter, 1),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1),
            nn.BatchNorm2d(channels),
        )
        self.global_att = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, inter, 1),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def weights(self, x: Tensor, y: Tensor) -> Tensor:
        """Fusion weights ``w`` in (0, 1), (B, C, H, W)."""
        xa = x + y
        return torch.sigmoid(self.local_att(xa) + self.global_att(xa))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y: (B, C, H, W) -> ``2 x w + 2 y (1 - w)``, (B, C, H, W)."""
        if x.shape != y.shape:
            raise ValueError(f"AFF inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        w = self.weights(x, y)
        return 2.0 * x * w + 2.0 * y * (1.0 - w)
