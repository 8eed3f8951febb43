"""Deep3DFaceRecon baseline encoder: ResNet-50, global average pooling, one linear head per attribute.

Deep3DFaceRecon_pytorch (``models/networks.py``, ``ReconNetWrapper``) replaces ResNet-50's classifier by
zero-initialised 1x1 convolutions on the pooled 2048-d feature, one per coefficient group; here one
zero-initialised ``nn.Linear`` per group (:class:`msma.models.heads.AttributeHeads`), which is the same map.
"""

from __future__ import annotations

from torch import Tensor

from msma.face_model.params import CoeffLayout, FaceParams
from msma.models.backbone import FeatureBackbone, create_backbone
from msma.models.encoder import FaceEncoder
from msma.models.heads import AttributeHeads, HeadInputs, HeadWidths

__all__ = ["Deep3DEncoder", "build_deep3d"]


class Deep3DEncoder(FaceEncoder):
    """Global-pooled deepest backbone stage -> zero-initialised linear heads.

    Args:
        backbone: feature backbone returning one (deepest) stage.
        layout: coefficient layout.
    """

    def __init__(self, backbone: FeatureBackbone, layout: CoeffLayout) -> None:
        super().__init__(backbone, layout)
        if len(backbone.channels) != 1:
            raise ValueError(f"Deep3DEncoder needs a backbone returning 1 stage, got {len(backbone.channels)}")
        self.heads = AttributeHeads(HeadWidths.uniform(backbone.channels[0]), layout)

    def forward_normalized(self, x: Tensor) -> FaceParams:
        """x: (B, 3, H, W) normalised image -> coefficients."""
        feat = self.backbone(x)[-1].mean(dim=(2, 3))
        return self.heads(HeadInputs.shared(feat))


def build_deep3d(
    layout: CoeffLayout,
    backbone: str = "resnet50",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
) -> Deep3DEncoder:
    """Deep3D baseline on the deepest stage of a timm backbone."""
    return Deep3DEncoder(create_backbone(backbone, (-1,), pretrained, pretrained_path, allow_random_init), layout)
