"""MLANet encoder: ResNet with coordinate attention in every residual block and AFF across stages.

MLANet (arXiv 2509.10024): a ResNet-50 whose bottlenecks apply coordinate attention after their 3x3
convolution, with attentional feature fusion (AFF, r = 4) combining the stages before pooled heads.

* Coordinate attention: Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021
  (Eq. 4-9): average-pool along W and along H, shared 1x1 conv (C -> max(8, C / r), r = 32) + BN + h-swish,
  then two 1x1 convs + sigmoid giving per-row and per-column gates, ``y = x * g_h * g_w``.
* It is inserted into timm's ResNet blocks in the slot after the 3x3 conv + BN + ReLU (``aa``, the
  anti-aliasing slot, an identity for standard ResNets), so pretrained ResNet weights load unchanged.
* Stages 2-4 are projected to ``fused_channels``, resampled to the deepest stage's resolution and combined by
  AFF from the finest up: ``f = AFF(s3, down(s2)); f = AFF(s4, down(f))``. The heads read the pooled fused
  feature concatenated with the pooled raw deepest stage.
"""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import Tensor, nn

from msma.face_model.params import CoeffLayout, FaceParams
from msma.models.backbone import FeatureBackbone, create_backbone
from msma.models.encoder import FaceEncoder
from msma.models.fusion import AttentionalFeatureFusion, conv_bn_act, resize_to
from msma.models.heads import AttributeHeads, HeadInputs, HeadWidths

__all__ = ["CoordinateAttention", "MLANetEncoder", "insert_coordinate_attention", "build_mlanet"]


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al. 2021): (B, C, H, W) -> (B, C, H, W) gated by row and column weights.

    Args:
        channels: C.
        reduction: r of the shared bottleneck, mid width ``max(8, C // r)`` (paper: 32).
    """

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        mid = max(8, channels // reduction)
        self.shared = nn.Sequential(nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish())
        self.gate_h = nn.Conv2d(mid, channels, 1)
        self.gate_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        h, w = x.shape[-2:]
        pooled_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1)
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.shared(torch.cat([pooled_h, pooled_w], dim=2))
        y_h, y_w = y.split([h, w], dim=2)
        return x * torch.sigmoid(self.gate_h(y_h)) * torch.sigmoid(self.gate_w(y_w.transpose(2, 3)))


def insert_coordinate_attention(module: nn.Module, reduction: int = 32) -> int:
    """Adds :class:`CoordinateAttention` after the 3x3 conv of every timm ResNet block inside ``module``.

    For a ``Bottleneck`` that is conv2 (3x3, width ``conv2.out_channels``); for a ``BasicBlock`` conv1. The
    attention goes into the block's ``aa`` slot (applied after that conv's BN + ReLU), before any existing
    anti-aliasing layer. Returns the number of blocks changed.

    Raises:
        ValueError: ``module`` has no timm ResNet blocks (MLANet needs a ResNet-family backbone).
    """
    count = 0
    for block in module.modules():
        if isinstance(block, Bottleneck):
            width = block.conv2.out_channels
        elif isinstance(block, BasicBlock):
            width = block.conv1.out_channels
        else:
            continue
        previous = block.aa if block.aa is not None else nn.Identity()
        block.aa = nn.Sequential(CoordinateAttention(width, reduction), previous)
        count += 1
    if count == 0:
        raise ValueError("MLANet needs a timm ResNet-family backbone (Bottleneck/BasicBlock blocks), found none")
    return count


class MLANetEncoder(FaceEncoder):
    """ResNet + coordinate attention + AFF across stages 2-4 + pooled heads.

    Args:
        backbone: feature backbone returning the three deepest stages, finest first (coordinate attention
            is inserted here by :func:`insert_coordinate_attention`).
        layout: coefficient layout.
        fused_channels: width of the AFF fusion.
        aff_reduction: AFF channel reduction r (MLANet: 4).
        ca_reduction: coordinate-attention reduction (Hou et al.: 32).
    """

    def __init__(
        self,
        backbone: FeatureBackbone,
        layout: CoeffLayout,
        fused_channels: int = 256,
        aff_reduction: int = 4,
        ca_reduction: int = 32,
    ) -> None:
        super().__init__(backbone, layout)
        if len(backbone.channels) != 3:
            raise ValueError(f"MLANetEncoder needs a backbone returning 3 stages, got {len(backbone.channels)}")
        self.num_ca_blocks = insert_coordinate_attention(backbone, ca_reduction)
        self.proj = nn.ModuleList(conv_bn_act(c, fused_channels, 1) for c in backbone.channels)
        self.down = nn.ModuleList(conv_bn_act(fused_channels, fused_channels, 3, stride=2) for _ in range(2))
        self.aff = nn.ModuleList(AttentionalFeatureFusion(fused_channels, aff_reduction) for _ in range(2))
        width = fused_channels + backbone.channels[-1]
        self.heads = AttributeHeads(HeadWidths.uniform(width), layout)

    def forward_normalized(self, x: Tensor) -> FaceParams:
        """x: (B, 3, H, W) normalised image -> coefficients."""
        stages = self.backbone(x)
        s2, s3, s4 = (p(s) for p, s in zip(self.proj, stages))
        f = self.aff[0](s3, resize_to(self.down[0](s2), tuple(s3.shape[-2:])))  # type: ignore[arg-type]
        f = self.aff[1](s4, resize_to(self.down[1](f), tuple(s4.shape[-2:])))  # type: ignore[arg-type]
        feat = torch.cat([f.mean(dim=(2, 3)), stages[-1].mean(dim=(2, 3))], dim=1)
        return self.heads(HeadInputs.shared(feat))


def build_mlanet(
    layout: CoeffLayout,
    backbone: str = "resnet50",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
    fused_channels: int = 256,
    aff_reduction: int = 4,
    ca_reduction: int = 32,
) -> MLANetEncoder:
    """MLANet on a timm ResNet (pretrained weights are loaded before coordinate attention is inserted)."""
    body = create_backbone(backbone, (-3, -2, -1), pretrained, pretrained_path, allow_random_init)
    return MLANetEncoder(body, layout, fused_channels, aff_reduction, ca_reduction)
