"""Zero-initialised multi-attribute coefficient heads shared by every encoder.

One ``nn.Linear`` per coefficient group (id, exp, tex, angles, sh, and translation split into tx/ty and tz so
that MSMA can read them from different depths). Every weight and bias starts at zero, so an untrained network
outputs exactly zero coefficients: the mean face, frontal, at the origin, under Deep3D's ambient light
(MSMA public code and Deep3DFaceRecon zero-initialise their final layers the same way).

Units: the translation heads predict decimetres and are multiplied by :data:`TRANS_UNIT_MM` = 100, so
:attr:`FaceParams.trans` is in millimetres while one network unit stays one Deep3D BFM unit (Deep3D's camera
sits 10 units from the origin = 1000 mm in msma's camera). Angles are radians as predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from msma.face_model.params import CoeffLayout, FaceParams

__all__ = ["HEAD_NAMES", "HeadInputs", "HeadWidths", "AttributeHeads", "TRANS_UNIT_MM"]

#: The heads, in the order of :class:`HeadWidths` / :class:`HeadInputs` (trans is split into tx/ty and tz).
HEAD_NAMES: tuple[str, ...] = ("id", "exp", "tex", "angles", "sh", "txy", "tz")

#: Millimetres per network translation unit (1 dm = 1 Deep3D BFM unit: camera at distance 10 = 1000 mm).
TRANS_UNIT_MM: float = 100.0


@dataclass(frozen=True)
class HeadWidths:
    """Input feature width of each head (the channels of the feature each head reads)."""

    id: int
    exp: int
    tex: int
    angles: int
    sh: int
    txy: int
    tz: int

    @staticmethod
    def uniform(width: int) -> HeadWidths:
        """All heads read the same ``width``-dimensional vector."""
        return HeadWidths(width, width, width, width, width, width, width)


@dataclass(frozen=True)
class HeadInputs:
    """Pooled features read by each head; every field is (B, width) with the width of :class:`HeadWidths`."""

    id: Tensor
    exp: Tensor
    tex: Tensor
    angles: Tensor
    sh: Tensor
    txy: Tensor
    tz: Tensor

    @staticmethod
    def shared(x: Tensor) -> HeadInputs:
        """Every head reads the same (B, C) vector."""
        return HeadInputs(x, x, x, x, x, x, x)


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class AttributeHeads(nn.Module):
    """Linear heads mapping :class:`HeadInputs` to :class:`FaceParams` (all zero-initialised).

    Args:
        widths: input width of each head.
        layout: coefficient counts (n_id, n_exp, n_tex) of the face model.
    """

    def __init__(self, widths: HeadWidths, layout: CoeffLayout) -> None:
        super().__init__()
        self.layout = layout
        self.widths = widths
        self.id = _zero_linear(widths.id, layout.n_id)
        self.exp = _zero_linear(widths.exp, layout.n_exp)
        self.tex = _zero_linear(widths.tex, layout.n_tex)
        self.angles = _zero_linear(widths.angles, layout.n_angles)
        self.sh = _zero_linear(widths.sh, layout.n_sh)
        self.txy = _zero_linear(widths.txy, 2)
        self.tz = _zero_linear(widths.tz, 1)

    def forward(self, feats: HeadInputs) -> FaceParams:
        """Features -> coefficients: id/exp/tex unitless, angles (B, 3) radians, sh (B, 27), trans (B, 3) mm."""
        trans = torch.cat([self.txy(feats.txy), self.tz(feats.tz)], dim=1) * TRANS_UNIT_MM
        return FaceParams(
            id=self.id(feats.id),
            exp=self.exp(feats.exp),
            tex=self.tex(feats.tex),
            angles=self.angles(feats.angles),
            sh=self.sh(feats.sh),
            trans=trans,
        )
