"""The encoder interface and the MSMA encoder (multi-scale fusion + large-kernel attention + multi-depth heads).

MSMA (arXiv 2509.11763; public code built on Deep3DFaceRecon_pytorch): a ResNet-50 whose stages 2-4 are
projected to modest widths, fused HRNet-style across resolutions (:class:`MultiScaleExchange`), refined by
large-kernel attention at each scale (:mod:`msma.models.lka`) and read by zero-initialised heads at
different depths: identity, expression and tz from stage 4; albedo and angles from stage 3; SH light and
tx, ty from stage 2.

Known quirk of the public code (selectable with ``attention_on_pooled=True``): it applies MLKA after pooling
each stage to 1x1, where every depthwise kernel only multiplies the zero-padded neighbourhood of a single
pixel, i.e. only its centre tap matters and MLKA degenerates into per-channel gating. The default applies the
attention on the spatial maps, where the large kernels see context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from msma.face_model.params import CoeffLayout, FaceParams
from msma.models.backbone import FeatureBackbone, create_backbone
from msma.models.fusion import MultiScaleExchange, conv_bn_act
from msma.models.heads import HEAD_NAMES, AttributeHeads, HeadInputs, HeadWidths
from msma.models.lka import DEFAULT_MLKA_CHAINS, VAN_LKA_CHAIN, LKAChain, build_attention

__all__ = ["FaceEncoder", "MSMAEncoder", "HeadScales", "MSMA_HEAD_SCALES", "build_msma"]


class FaceEncoder(nn.Module):
    """Base class: image in [0, 1] -> :class:`FaceParams`.

    Subclasses implement :meth:`forward_normalized`. Normalisation uses the backbone's pretrained mean/std.

    Attributes:
        layout: the coefficient layout of the face model.
        backbone: the :class:`FeatureBackbone`.
    """

    layout: CoeffLayout
    backbone: FeatureBackbone

    def __init__(self, backbone: FeatureBackbone, layout: CoeffLayout) -> None:
        super().__init__()
        self.backbone = backbone
        self.layout = layout
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> backbone input ``(image - mean) / std``."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects a (B, 3, H, W) RGB image, got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a float image in [0, 1], got dtype {image.dtype}")
        mean: Tensor = self.pixel_mean  # type: ignore[assignment]
        std: Tensor = self.pixel_std  # type: ignore[assignment]
        return (image - mean.to(image.dtype)) / std.to(image.dtype)

    def forward_normalized(self, x: Tensor) -> FaceParams:
        """x: (B, 3, H, W) normalised image -> coefficients."""
        raise NotImplementedError

    def forward(self, image: Tensor) -> FaceParams:
        """image: (B, 3, H, W) float RGB in [0, 1] -> :class:`FaceParams` (trans in mm, angles in radians)."""
        return self.forward_normalized(self.normalize(image))


def _pool(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C) global average."""
    return x.mean(dim=(2, 3))


@dataclass(frozen=True)
class HeadScales:
    """Index of the scale each head reads: 0 = stage 2 (stride 8), 1 = stage 3 (16), 2 = stage 4 (32)."""

    id: int
    exp: int
    tex: int
    angles: int
    sh: int
    txy: int
    tz: int

    def used(self) -> tuple[int, ...]:
        """Sorted distinct scales read by some head."""
        return tuple(sorted({getattr(self, f) for f in HEAD_NAMES}))


#: MSMA public code: id, exp, tz from stage 4; tex, angles from stage 3; SH, tx, ty from stage 2.
MSMA_HEAD_SCALES = HeadScales(id=2, exp=2, tex=1, angles=1, sh=0, txy=0, tz=2)
#: ``single_scale`` ablation: every head reads stage 4.
SINGLE_SCALE_HEADS = HeadScales(id=2, exp=2, tex=2, angles=2, sh=2, txy=2, tz=2)


class MSMAEncoder(FaceEncoder):
    """MSMA: fused multi-scale features with large-kernel attention and heads at several depths.

    Args:
        backbone: feature backbone returning the three deepest stages (ResNet stages 2, 3, 4), finest first.
        layout: coefficient layout.
        channels: width each stage is projected to before fusion (one per stage; multiples of the number of
            MLKA chains when ``attention="mlka"``).
        attention: ``"mlka"`` | ``"lka"`` | ``"none"``, applied at each used scale after fusion.
        fusion: HRNet exchange between the scales; off: each scale only sees its own stage.
        attention_on_pooled: the public-code variant: pool each scale to 1x1 first, then attention.
        single_scale: all heads read stage 4 (ablation of the multi-depth heads).
        lka_chain: kernels of ``"lka"`` (VAN default 5 -> 7 d3).
        mlka_chains, mlka_gate_kernel_sizes: kernels of ``"mlka"`` (default 3->5 d2, 5->7 d3, 7->9 d4; gates 3/5/7).
    """

    def __init__(
        self,
        backbone: FeatureBackbone,
        layout: CoeffLayout,
        channels: Sequence[int] = (96, 192, 384),
        attention: str = "mlka",
        fusion: bool = True,
        attention_on_pooled: bool = False,
        single_scale: bool = False,
        lka_chain: LKAChain = VAN_LKA_CHAIN,
        mlka_chains: Sequence[LKAChain] = DEFAULT_MLKA_CHAINS,
        mlka_gate_kernel_sizes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(backbone, layout)
        n = len(backbone.channels)
        if n != 3:
            raise ValueError(f"MSMAEncoder needs a backbone returning 3 stages, got {n}")
        channels = tuple(int(c) for c in channels)
        if len(channels) != n or min(channels) < 1:
            raise ValueError(f"MSMAEncoder channels must be {n} positive widths, got {list(channels)}")
        self.attention_kind = attention
        self.fusion_enabled = fusion
        self.attention_on_pooled = attention_on_pooled
        self.single_scale = single_scale
        self.head_scales = SINGLE_SCALE_HEADS if single_scale else MSMA_HEAD_SCALES
        self.used_scales: tuple[int, ...] = self.head_scales.used()
        # Projections are needed for every scale that feeds a used output (all of them when fusing).
        inputs = tuple(range(n)) if fusion else self.used_scales
        self.input_scales = inputs
        self.proj = nn.ModuleList(conv_bn_act(backbone.channels[s], channels[s], 1) for s in inputs)
        self.exchange: MultiScaleExchange | None = None
        if fusion:
            self.exchange = MultiScaleExchange(channels, backbone.reductions, out_scales=self.used_scales)
        self.attn = nn.ModuleList(
            build_attention(attention, channels[s], lka_chain, mlka_chains, mlka_gate_kernel_sizes)
            for s in self.used_scales
        )
        self.heads = AttributeHeads(
            HeadWidths(**{f: channels[getattr(self.head_scales, f)] for f in HEAD_NAMES}),
            layout,
        )

    def scale_features(self, x: Tensor) -> list[Tensor]:
        """Normalised image -> per used scale: (B, C_s, 1, 1) pooled-then-attended or (B, C_s, h, w) attended maps."""
        stages = self.backbone(x)
        projected = [p(stages[s]) for p, s in zip(self.proj, self.input_scales)]
        if self.exchange is not None:
            fused = self.exchange(projected)
        else:
            fused = projected  # input_scales == used_scales
        if self.attention_on_pooled:
            return [a(f.mean(dim=(2, 3), keepdim=True)) for a, f in zip(self.attn, fused)]
        return [a(f) for a, f in zip(self.attn, fused)]

    def forward_normalized(self, x: Tensor) -> FaceParams:
        """x: (B, 3, H, W) normalised image -> coefficients."""
        pooled = {s: _pool(f) for s, f in zip(self.used_scales, self.scale_features(x))}
        feats = HeadInputs(**{f: pooled[getattr(self.head_scales, f)] for f in HEAD_NAMES})
        return self.heads(feats)


def build_msma(
    layout: CoeffLayout,
    backbone: str = "resnet50",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
    channels: Sequence[int] = (96, 192, 384),
    attention: str = "mlka",
    fusion: bool = True,
    attention_on_pooled: bool = False,
    single_scale: bool = False,
    lka_chain: LKAChain = VAN_LKA_CHAIN,
    mlka_chains: Sequence[LKAChain] = DEFAULT_MLKA_CHAINS,
    mlka_gate_kernel_sizes: Sequence[int] | None = None,
) -> MSMAEncoder:
    """MSMA encoder on the three deepest stages of a timm backbone (see :class:`MSMAEncoder`)."""
    body = create_backbone(backbone, (-3, -2, -1), pretrained, pretrained_path, allow_random_init)
    return MSMAEncoder(
        body,
        layout,
        channels=channels,
        attention=attention,
        fusion=fusion,
        attention_on_pooled=attention_on_pooled,
        single_scale=single_scale,
        lka_chain=lka_chain,
        mlka_chains=mlka_chains,
        mlka_gate_kernel_sizes=mlka_gate_kernel_sizes,
    )
