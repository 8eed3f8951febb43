"""Deep3DFaceRecon baseline encoder (``deep3d_r50``): torchvision ResNet-50, global average pool, seven heads.

Deep3DFaceRecon_pytorch (``models/networks.py``, ``ReconNetWrapper`` with ``func_dict['resnet50']``): a
torchvision ResNet-50 without ``fc`` on the [0, 1] image (no ImageNet normalisation), initialised from
torchvision's ``resnet50-0676ba61.pth``; the pooled 2048-d feature feeds seven zero-initialised 1x1 convs
(id, exp, tex, angles, gamma, tx/ty, tz). Here the backbone is :class:`msma.models.resnet.ResNet` (same
layout and keys) and the heads are zero-initialised ``nn.Linear`` layers (:class:`AttributeHeads`), the same
map as a 1x1 conv on a 1x1 map. 24,034,625 parameters with the 257-coefficient layout. Deep3D also offers
ResNet-18; resnet18 / resnet34 are accepted here.
"""

from __future__ import annotations

from torch import Tensor

from msma.face_model.params import CoeffLayout, FaceParams
from msma.models.encoder import FaceEncoder
from msma.models.heads import AttributeHeads, HeadInputs, HeadWidths
from msma.models.resnet import ResNet, build_resnet

__all__ = ["Deep3DEncoder", "build_deep3d"]


class Deep3DEncoder(FaceEncoder):
    """Global-pooled stage 4 of a torchvision-layout ResNet -> zero-initialised linear heads.

    Args:
        backbone: :class:`ResNet`.
        layout: coefficient layout.
    """

    def __init__(self, backbone: ResNet, layout: CoeffLayout) -> None:
        super().__init__(backbone, layout)
        self.heads = AttributeHeads(HeadWidths.uniform(backbone.channels[-1]), layout)

    def forward_normalized(self, x: Tensor) -> FaceParams:
        """x: (B, 3, H, W) image in [0, 1] -> coefficients."""
        feat = self.backbone(x)[-1].mean(dim=(2, 3))
        return self.heads(HeadInputs.shared(feat))


def build_deep3d(
    layout: CoeffLayout,
    backbone: str = "resnet50",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
) -> Deep3DEncoder:
    """Deep3D baseline on a torchvision-layout ResNet (torchvision ImageNet weights when ``pretrained``)."""
    return Deep3DEncoder(build_resnet(backbone, None, pretrained, pretrained_path, allow_random_init), layout)
