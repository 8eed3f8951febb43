"""Large-kernel attention: VAN's LKA and MSMA's multi-scale MLKA.

Sources:
* LKA: Guo et al., "Visual Attention Network" (VAN, arXiv 2202.09741), Sec. 3.2: a K x K convolution is
  decomposed into a depthwise (2d-1) x (2d-1) conv, a depthwise dilated ceil(K/d) x ceil(K/d) conv with
  dilation d and a pointwise conv; the result gates the input multiplicatively. VAN uses 5x5, 7x7 d=3.
* MLKA: the multi-scale large-kernel attention of MAN (Wang et al., "Multi-scale Attention Network for
  Single Image Super-Resolution", arXiv 2209.14145), which MSMA's public code uses: the channels are split
  into three groups, each with its own LKA chain (3x3 -> 5x5 d2, 5x5 -> 7x7 d3, 7x7 -> 9x9 d4) gated by a
  depthwise 3x3 / 5x5 / 7x7 conv; a learnable per-channel output scale initialised to 0 makes the block
  start as the identity.

All modules take and return ``(B, C, H, W)`` feature maps and keep the shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "LKA",
    "MLKA",
    "ChannelLayerNorm",
    "LKABlock",
    "LKAChain",
    "build_attention",
    "DEFAULT_MLKA_CHAINS",
    "VAN_LKA_CHAIN",
]


@dataclass(frozen=True)
class LKAChain:
    """Kernel sizes of one LKA chain: depthwise ``kernel_size`` then depthwise dilated ``dilated_kernel_size``.

    Attributes:
        kernel_size: odd size of the first (dense) depthwise kernel.
        dilated_kernel_size: odd size of the second depthwise kernel.
        dilation: dilation of the second kernel.
    """

    kernel_size: int
    dilated_kernel_size: int
    dilation: int

    def __post_init__(self) -> None:
        for name in ("kernel_size", "dilated_kernel_size"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"LKAChain.{name} must be a positive odd integer, got {k}")
        if self.dilation < 1:
            raise ValueError(f"LKAChain.dilation must be >= 1, got {self.dilation}")

    @property
    def receptive_field(self) -> int:
        """Side (pixels) of the square an output pixel of the chain depends on: k1 + d (k2 - 1)."""
        return self.kernel_size + self.dilation * (self.dilated_kernel_size - 1)


#: VAN's LKA: 5x5 depthwise, then 7x7 depthwise with dilation 3 (receptive field 23).
VAN_LKA_CHAIN = LKAChain(5, 7, 3)

#: MSMA / MAN MLKA chains: 3 -> 5 d2, 5 -> 7 d3, 7 -> 9 d4 (MAN arch file, ``GroupGLKA``).
DEFAULT_MLKA_CHAINS: tuple[LKAChain, ...] = (LKAChain(3, 5, 2), LKAChain(5, 7, 3), LKAChain(7, 9, 4))


def _depthwise(channels: int, kernel_size: int, dilation: int = 1) -> nn.Conv2d:
    """Depthwise conv with 'same' zero padding (odd kernels)."""
    return nn.Conv2d(
        channels, channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, groups=channels
    )


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of a ``(B, C, H, W)`` map, independently at every pixel."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LKA(nn.Module):
    """VAN large-kernel attention: ``x * pw(dw_dilated(dw(x)))``.

    Args:
        channels: C of the ``(B, C, H, W)`` input.
        kernel_size: first depthwise kernel (VAN: 5).
        dilated_kernel_size: second, dilated depthwise kernel (VAN: 7).
        dilation: its dilation (VAN: 3). Receptive field ``kernel_size + dilation * (dilated_kernel_size - 1)``
            (23 for VAN's setting).
    """

    def __init__(self, channels: int, kernel_size: int = 5, dilated_kernel_size: int = 7, dilation: int = 3) -> None:
        super().__init__()
        self.chain = LKAChain(kernel_size, dilated_kernel_size, dilation)
        self.conv0 = _depthwise(channels, kernel_size)
        self.conv_spatial = _depthwise(channels, dilated_kernel_size, dilation)
        self.conv1 = nn.Conv2d(channels, channels, 1)

    @property
    def receptive_field(self) -> int:
        return self.chain.receptive_field

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class LKABlock(nn.Module):
    """Residual VAN attention block: ``x + scale * proj2(LKA(gelu(proj1(norm(x)))))``.

    The same residual/zero-scale wrapping as :class:`MLKA`, so the ``lka`` and ``mlka`` ablations differ only
    in the attention itself. ``scale`` (1, C, 1, 1) starts at 0: the block is the identity at initialisation.
    """

    def __init__(self, channels: int, kernel_size: int = 5, dilated_kernel_size: int = 7, dilation: int = 3) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(channels)
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.lka = LKA(channels, kernel_size, dilated_kernel_size, dilation)
        self.proj_2 = nn.Conv2d(channels, channels, 1)
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @property
    def receptive_field(self) -> int:
        return self.lka.receptive_field

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        y = self.proj_2(self.lka(self.act(self.proj_1(self.norm(x)))))
        return x + self.scale * y


class MLKA(nn.Module):
    """Multi-scale large-kernel attention (MAN / MSMA public code).

    ``norm -> 1x1 conv to 2C -> split (a, v)``; ``a`` is split into one group per chain, each group becomes
    ``LKA_chain(a_i) * dw_gate_i(a_i)``; the result gates ``v``; a 1x1 projection scaled by a learnable
    per-channel ``scale`` (initialised to 0) is added to the input.

    Args:
        channels: C of the ``(B, C, H, W)`` input; must be divisible by the number of chains.
        chains: one :class:`LKAChain` per group (default 3->5 d2, 5->7 d3, 7->9 d4).
        gate_kernel_sizes: depthwise gate kernel per chain; default: each chain's first kernel (3, 5, 7).
    """

    def __init__(
        self,
        channels: int,
        chains: Sequence[LKAChain] = DEFAULT_MLKA_CHAINS,
        gate_kernel_sizes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        chains = tuple(chains)
        if not chains:
            raise ValueError("MLKA needs at least one chain")
        if channels % len(chains) != 0:
            raise ValueError(f"MLKA channels ({channels}) must be divisible by the number of chains ({len(chains)})")
        gates = tuple(gate_kernel_sizes) if gate_kernel_sizes is not None else tuple(c.kernel_size for c in chains)
        if len(gates) != len(chains):
            raise ValueError(f"MLKA got {len(gates)} gate kernels for {len(chains)} chains")
        for g in gates:
            if g < 1 or g % 2 == 0:
                raise ValueError(f"MLKA gate kernel sizes must be positive odd integers, got {gates}")
        self.chains = chains
        self.gate_kernel_sizes = gates
        group = channels // len(chains)
        self.norm = ChannelLayerNorm(channels)
        self.proj_first = nn.Conv2d(channels, 2 * channels, 1)
        self.lkas = nn.ModuleList(
            nn.Sequential(
                _depthwise(group, c.kernel_size),
                _depthwise(group, c.dilated_kernel_size, c.dilation),
                nn.Conv2d(group, group, 1),
            )
            for c in chains
        )
        self.gates = nn.ModuleList(_depthwise(group, g) for g in gates)
        self.proj_last = nn.Conv2d(channels, channels, 1)
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @property
    def receptive_field(self) -> int:
        """Side of the square of input pixels one output pixel depends on (largest chain or gate)."""
        return max(max(c.receptive_field for c in self.chains), max(self.gate_kernel_sizes))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        a, v = self.proj_first(self.norm(x)).chunk(2, dim=1)
        groups = a.chunk(len(self.chains), dim=1)
        attn = torch.cat([lka(g) * gate(g) for lka, gate, g in zip(self.lkas, self.gates, groups)], dim=1)
        return x + self.scale * self.proj_last(v * attn)


def build_attention(
    kind: str,
    channels: int,
    lka_chain: LKAChain = VAN_LKA_CHAIN,
    mlka_chains: Sequence[LKAChain] = DEFAULT_MLKA_CHAINS,
    mlka_gate_kernel_sizes: Sequence[int] | None = None,
) -> nn.Module:
    """Attention block by name: ``"mlka"`` (:class:`MLKA`), ``"lka"`` (:class:`LKABlock`), ``"none"`` (identity).

    All keep the ``(B, C, H, W)`` shape and are the identity at initialisation (zero output scale).
    """
    if kind == "mlka":
        return MLKA(channels, mlka_chains, mlka_gate_kernel_sizes)
    if kind == "lka":
        return LKABlock(channels, lka_chain.kernel_size, lka_chain.dilated_kernel_size, lka_chain.dilation)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown attention {kind!r}; expected 'mlka', 'lka' or 'none'")
