"""MLANet as the authors build it (``mlanet``), and msma's variant ``mlanet_timm``.

**MLANet** (arXiv 2509.10024), :class:`MLANet`. Reference: ``danielle20010405/MLANet-MSMT``,
``models/MLANet/bottle_co-downaff.py`` (the variant ``test_csf.sh`` evaluates) and ``models/attention.py``
(``CoordAtt``, ``AFF``); msma's own implementation, layer for layer:

* torchvision-layout ResNet-50 (:mod:`msma.models.resnet`) on the [0, 1] image; every bottleneck applies
  coordinate attention (:class:`CoordAtt`, reduction 32, mid width ``max(8, C // 32)``) to the output of its
  3x3 conv, BEFORE ``bn2`` and its ReLU.
* Cross-stage AFF (:class:`msma.models.fusion.AFF`, r = 4, BN in both branches, ``2 x w + 2 y (1 - w)``):
  ``f = AFF(x2, down1(x1)); f = AFF(x3, down2(f)); f = AFF(x4, down3(f))`` with ``down`` a 1x1 stride-2 conv
  with bias (256 -> 512 -> 1024 -> 2048), so stage 1 takes part.
* Global average pool of ``f`` (2048) and seven zero-initialised heads (1x1 convs on 1x1 = linear layers).

The reference also constructs per-stage ``layer_atten`` (CoordAtt) and ``channel_change`` (1x1 convs) modules
that its forward never calls (4,206,440 parameters); they are not built here. ResNet-18/34 are accepted as
msma's small-compute option (coordinate attention after the second 3x3 conv of each basic block, before bn2).

**mlanet_timm** (:class:`MLANetTimmEncoder`), msma's variant kept under its own name:

* Coordinate attention: Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021
  (Eq. 4-9): average-pool along W and along H, shared 1x1 conv (C -> max(8, C / r), r = 32) + BN + h-swish,
  then two 1x1 convs + sigmoid giving per-row and per-column gates, ``y = x * g_h * g_w``.
* It is inserted into timm's ResNet blocks in the slot after the 3x3 conv + BN + ReLU (``aa``, the
  anti-aliasing slot, an identity for standard ResNets), so pretrained ResNet weights load unchanged.
* Stages 2-4 are projected to ``fused_channels``, resampled to the deepest stage's resolution and combined by
  AFF from the finest up: ``f = AFF(s3, down(s2)); f = AFF(s4, down(f))``. The heads read the pooled fused
  feature concatenated with the pooled raw deepest stage.
* Differences from the authors' MLANet: attention after bn2 + ReLU instead of before bn2, stage 1 not fused,
  projected 256-wide AFF (3x3 stride-2 conv + BN + ReLU downsampling, no BN in the global branch, output
  ``x w + y (1 - w)`` without the factor 2), 2304-d concatenated readout, ImageNet-normalised input; any timm
  ResNet works (e.g. ResNet-18 for quick CPU runs).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import Tensor, nn

from msma.face_model.params import CoeffLayout, FaceParams
from msma.models.backbone import FeatureBackbone, create_backbone
from msma.models.encoder import FaceEncoder
from msma.models.fusion import AFF, AttentionalFeatureFusion, conv_bn_act, resize_to
from msma.models.heads import AttributeHeads, HeadInputs, HeadWidths
from msma.models.resnet import ResNet, build_resnet, init_conv_bn

__all__ = [
    "CoordAtt",
    "CoordinateAttention",
    "MLANet",
    "MLANetTimmEncoder",
    "build_mlanet",
    "build_mlanet_timm",
    "insert_coordinate_attention",
]


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


class MLANetTimmEncoder(FaceEncoder):
    """msma's MLANet variant: timm ResNet + coordinate attention after bn2/ReLU + AFF of stages 2-4 + concat heads.

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
            raise ValueError(f"MLANetTimmEncoder needs a backbone returning 3 stages, got {len(backbone.channels)}")
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
        f = self.aff[0](s3, resize_to(self.down[0](s2), tuple(s3.shape[-2:])))
        f = self.aff[1](s4, resize_to(self.down[1](f), tuple(s4.shape[-2:])))
        feat = torch.cat([f.mean(dim=(2, 3)), stages[-1].mean(dim=(2, 3))], dim=1)
        return self.heads(HeadInputs.shared(feat))


def build_mlanet_timm(
    layout: CoeffLayout,
    backbone: str = "resnet50",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
    fused_channels: int = 256,
    aff_reduction: int = 4,
    ca_reduction: int = 32,
) -> MLANetTimmEncoder:
    """msma's MLANet variant on a timm ResNet (pretrained weights are loaded before coordinate attention is inserted)."""
    body = create_backbone(backbone, (-3, -2, -1), pretrained, pretrained_path, allow_random_init)
    return MLANetTimmEncoder(body, layout, fused_channels, aff_reduction, ca_reduction)


class CoordAtt(nn.Module):
    """Coordinate attention as MLANet's code builds it (``models/attention.py``, ``CoordAtt``; Hou et al. 2021).

    ``y = x * sigmoid(conv_w(t_w)) * sigmoid(conv_h(t_h))`` with ``[t_h, t_w] = h_swish(bn1(conv1([pool_W(x),
    pool_H(x)])))``; ``conv1`` (C -> max(8, C // r)), ``conv_h``, ``conv_w`` (-> C) are 1x1 convs with bias.

    Args:
        channels: C of the (B, C, H, W) input.
        reduction: r (32).
    """

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        mip = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        h, w = x.shape[-2:]
        x_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1)
        x_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = y.split([h, w], dim=2)
        return x * torch.sigmoid(self.conv_w(y_w.transpose(2, 3))) * torch.sigmoid(self.conv_h(y_h))


class MLANet(FaceEncoder):
    """The authors' MLANet network (see the module docstring).

    Args:
        backbone: a torchvision-layout :class:`ResNet` built with :class:`CoordAtt` in every block.
        layout: coefficient layout; head sizes follow it.
        aff_reduction: AFF reduction r (4).
    """

    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "backbone": ("backbone",),
        "fusion": ("down", "aff"),
        "heads": ("heads",),
    }

    def __init__(self, backbone: ResNet, layout: CoeffLayout, aff_reduction: int = 4) -> None:
        super().__init__(backbone, layout)
        c = tuple(backbone.channels)
        self.down = nn.ModuleList(nn.Conv2d(c[i], c[i + 1], 1, stride=2) for i in range(3))
        self.aff = nn.ModuleList(AFF(c[i + 1], aff_reduction) for i in range(3))
        init_conv_bn(self.down)
        init_conv_bn(self.aff)
        self.heads = AttributeHeads(HeadWidths.uniform(c[3]), layout)

    def fused(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) image -> the AFF output at stage 4's resolution, (B, C_4, H / 32, W / 32)."""
        x1, x2, x3, x4 = self.backbone(x)
        f = self.aff[0](x2, self.down[0](x1))
        f = self.aff[1](x3, self.down[1](f))
        return self.aff[2](x4, self.down[2](f))

    def forward_normalized(self, x: Tensor) -> FaceParams:
        """x: (B, 3, H, W) image in [0, 1] -> coefficients."""
        feat = self.fused(x).mean(dim=(2, 3))
        return self.heads(HeadInputs.shared(feat))


def build_mlanet(
    layout: CoeffLayout,
    backbone: str = "resnet50",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
    aff_reduction: int = 4,
    ca_reduction: int = 32,
) -> MLANet:
    """The authors' MLANet on a torchvision-layout ResNet (ImageNet weights load around the attention)."""
    body = build_resnet(backbone, lambda w: CoordAtt(w, ca_reduction), pretrained, pretrained_path, allow_random_init)
    return MLANet(body, layout, aff_reduction)
