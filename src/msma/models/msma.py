"""MSMA as the authors build it (``msma_lka``): ResNet-50, in-place HRNet fusion of four branches, MLKA, centre readout.

Reference: ``danielle20010405/MLANet-MSMT``, ``models/MSMTNet/multifusion-multitask-MLKA.py`` (``ResNet`` with
``_make_fuse_layers`` / ``_forward_impl``, ``ReconNetWrapper``) and ``models/attention.py`` (``MLKA``); this is
msma's own implementation of that network, layer for layer:

1. torchvision-layout ResNet-50 (:mod:`msma.models.resnet`) on the [0, 1] image (no ImageNet normalisation).
2. Four branches: stage 1 unpooled (256, H/4) and stages 2-4 average-pooled to 1x1 at 512 / 1024 / 2048.
3. HRNet fuse layers (``fuse_layers[i][j]``: j > i: 1x1 conv + BN, then bilinear resize to branch i; j < i:
   i - j stride-2 3x3 conv + BN steps, ReLU between them, widths of branch j until the last), run **in place**
   in the reference's order: for branch i = 0..3 and each j != i, ``y = relu(y + path_ij(branches[j]))`` and
   the branch list is updated after every addition, so a later branch reads the already-fused earlier ones.
   Because stage 1's stride-2 paths are added to the pooled branches, branches 1-3 come out spatial again
   (28, 14, 7 at 224 px).
4. Per branch 1-3: 1x1 conv (bias) to 513 / 1026 / 2049 (= 3 ceil(C / 3), the MLKA group split), MLKA
   (:class:`msma.models.lka.MLKA`, output scale initialised to 0), bilinear resize to the pooled stage-4 size
   (1x1: for 28x28 and 14x14 maps the mean of the centre 2x2 pixels, for 7x7 the centre pixel; not a global
   mean), 1x1 conv (bias) to 2048.
5. Seven zero-initialised heads (1x1 convs on 1x1 maps = linear layers, :class:`AttributeHeads`): id, exp, tz
   from branch 3 (stage 4); tex, angles from branch 2; SH, tx/ty from branch 1. Branch 0 only feeds the fusion.

Initialisation as the reference: Kaiming-normal (fan_out) on every conv (also inside MLKA), BN 1/0, then
torchvision's ImageNet weights on the backbone. The reference also builds an ``MS_CAM`` in every bottleneck
whose call is commented out; it never runs and is not built here. ResNet-18/34 are accepted as msma's
small-compute option (widths follow the backbone: adjust to 3 ceil(C / 3), readout to the stage-4 width).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from msma.face_model.params import CoeffLayout, FaceParams
from msma.models.encoder import FaceEncoder
from msma.models.heads import AttributeHeads, HeadInputs, HeadWidths
from msma.models.lka import MLKA
from msma.models.resnet import ResNet, build_resnet, init_conv_bn

__all__ = ["MSMANet", "build_msma", "fuse_layers", "mlka_width"]


def mlka_width(channels: int) -> int:
    """Width a branch is adjusted to before MLKA: the next multiple of 3 (512 -> 513, 1024 -> 1026, 2048 -> 2049)."""
    return 3 * math.ceil(channels / 3)


def fuse_layers(channels: tuple[int, ...]) -> nn.ModuleList:
    """``fuse_layers[i][j]`` of the reference (``_make_fuse_layers``), as nested ModuleLists.

    j > i: ``Sequential(conv1x1 C_j -> C_i (no bias), BN)``; j == i: an identity placeholder (no parameters,
    keeps the reference's indices); j < i: ``Sequential`` of i - j ``Sequential(conv3x3 s2 (no bias), BN[, ReLU])``
    steps, C_j wide until the last, which maps to C_i without ReLU.
    """
    rows = nn.ModuleList()
    n = len(channels)
    for i in range(n):
        row = nn.ModuleList()
        for j in range(n):
            if j > i:
                row.append(
                    nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False), nn.BatchNorm2d(channels[i]))
                )
            elif j == i:
                row.append(nn.Identity())
            else:
                steps: list[nn.Module] = []
                for k in range(i - j):
                    last = k == i - j - 1
                    cout = channels[i] if last else channels[j]
                    step: list[nn.Module] = [nn.Conv2d(channels[j], cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)]
                    if not last:
                        step.append(nn.ReLU(inplace=True))
                    steps.append(nn.Sequential(*step))
                row.append(nn.Sequential(*steps))
        rows.append(row)
    return rows


class MSMANet(FaceEncoder):
    """The authors' MSMA network (see the module docstring for the computation).

    Args:
        backbone: a torchvision-layout :class:`ResNet` (ResNet-50 in the paper).
        layout: coefficient layout; head sizes follow it (257 for Deep3D's BFM layout).

    Attributes:
        fuse_layers: the 4 x 4 fuse paths.
        adjust: 1x1 convs of branches 1-3 to the MLKA widths.
        mlka: the three MLKA blocks.
        to_readout: 1x1 convs of branches 1-3 to the stage-4 width (2048).
        heads: :class:`AttributeHeads`.
    """

    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "backbone": ("backbone",),
        "fusion": ("fuse_layers",),
        "projection": ("adjust", "to_readout"),
        "attention": ("mlka",),
        "heads": ("heads",),
    }

    def __init__(self, backbone: ResNet, layout: CoeffLayout) -> None:
        super().__init__(backbone, layout)
        c = tuple(backbone.channels)
        widths = [mlka_width(ch) for ch in c[1:]]
        self.fuse_layers = fuse_layers(c)
        self.adjust = nn.ModuleList(nn.Conv2d(ch, w, 1) for ch, w in zip(c[1:], widths))
        self.mlka = nn.ModuleList(MLKA(w) for w in widths)
        self.to_readout = nn.ModuleList(nn.Conv2d(w, c[3], 1) for w in widths)
        # The reference's init loop covers every conv and BN of its ResNet module, these included.
        for part in (self.fuse_layers, self.adjust, self.mlka, self.to_readout):
            init_conv_bn(part)
        self.heads = AttributeHeads(HeadWidths.uniform(c[3]), layout)

    def fuse(self, stages: list[Tensor]) -> list[Tensor]:
        """Four stage maps -> the four fused branches (in-place order of the reference's ``_forward_impl``)."""
        branches = [stages[0], *(F.adaptive_avg_pool2d(s, 1) for s in stages[1:])]
        for i, row in enumerate(self.fuse_layers):
            y = branches[i]
            paths: nn.ModuleList = row  # type: ignore[assignment]
            for j, path in enumerate(paths):
                if j == i:
                    continue
                z = path(branches[j])
                if j > i:
                    z = F.interpolate(z, size=tuple(y.shape[-2:]), mode="bilinear", align_corners=False)
                y = F.relu(y + z)
                branches[i] = y
        return branches

    def attended(self, branches: list[Tensor]) -> list[Tensor]:
        """Fused branches 1-3 -> their MLKA outputs (B, 3 ceil(C_i / 3), h_i, w_i) (the maps MLKA sees and returns)."""
        return [m(a(b)) for a, m, b in zip(self.adjust, self.mlka, branches[1:])]

    def readout(self, attended: list[Tensor], size: tuple[int, int]) -> list[Tensor]:
        """MLKA outputs -> bilinear resize to ``size`` (the pooled stage 4's, 1x1) -> 1x1 conv, flattened (B, C_4)."""
        out = []
        for conv, a in zip(self.to_readout, attended):
            r = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            out.append(conv(r).flatten(1))
        return out

    def forward_normalized(self, x: Tensor) -> FaceParams:
        """x: (B, 3, H, W) image in [0, 1] -> coefficients."""
        stages = self.backbone(x)
        target = (1, 1)  # the reference takes the size of avgpool(stage 4) before fusing
        b1, b2, b3 = self.readout(self.attended(self.fuse(stages)), target)
        return self.heads(HeadInputs(id=b3, exp=b3, tex=b2, angles=b2, sh=b1, txy=b1, tz=b3))


def build_msma(
    layout: CoeffLayout,
    backbone: str = "resnet50",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
) -> MSMANet:
    """The authors' MSMA on a torchvision-layout ResNet (torchvision ImageNet weights when ``pretrained``)."""
    return MSMANet(build_resnet(backbone, None, pretrained, pretrained_path, allow_random_init), layout)
