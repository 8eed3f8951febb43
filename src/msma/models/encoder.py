"""The encoder interface, and ``msma_spatial``: msma's own multi-scale variant of MSMA.

The authors' MSMA network is :class:`msma.models.msma.MSMANet` (``msma_lka``). This module keeps msma's own
variant, :class:`MSMASpatialEncoder` (``msma_spatial``, before November 2026 registered as ``msma_lka``): a timm
backbone whose stages 2-4 (not stage 1) are projected to modest widths (default 96/192/384), fused HRNet-style
across resolutions (:class:`MultiScaleExchange`, a parallel exchange, not the authors' in-place loop), refined
by large-kernel attention at each scale (:mod:`msma.models.lka`), read out by a global mean and by heads at
different depths (id, exp, tz from stage 4; tex, angles from stage 3; SH, tx, ty from stage 2). It uses
ImageNet-normalised input.

Ablation options (msma's, none of them is in the authors' code): ``attention`` (``mlka`` | ``lka`` |
``none``), ``fusion=False``, ``single_scale=True`` (all heads read stage 4) and ``attention_on_pooled=True``
(MLKA on maps pooled to 1x1, where each depthwise kernel only sees its centre tap; in the authors' network the
maps that reach MLKA are spatial, see :class:`msma.models.msma.MSMANet`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from msma.face_model.params import CoeffLayout, FaceParams
from msma.models.backbone import FeatureBackbone, create_backbone
from msma.models.fusion import MultiScaleExchange, conv_bn_act
from msma.models.heads import HEAD_NAMES, AttributeHeads, HeadInputs, HeadWidths
from msma.models.lka import DEFAULT_MLKA_CHAINS, VAN_LKA_CHAIN, LKAChain, build_attention

__all__ = ["FaceEncoder", "MSMASpatialEncoder", "HeadScales", "MSMA_HEAD_SCALES", "build_msma_spatial"]


class FaceEncoder(nn.Module):
    """Base class: image in [0, 1] -> :class:`FaceParams`.

    Subclasses implement :meth:`forward_normalized`. A timm :class:`FeatureBackbone` brings its pretrained
    mean/std and the image is normalised with them (msma's variants); any other backbone (the authors'
    torchvision-layout ResNets) sees the [0, 1] image unchanged, as in Deep3DFaceRecon and MSMA/MLANet.

    Attributes:
        layout: the coefficient layout of the face model.
        backbone: the feature backbone.
        input_normalized: whether :meth:`normalize` applies ``(image - mean) / std``.
        PARTS: parameter groups reported by ``msma info``: part name -> names of child modules.
    """

    layout: CoeffLayout
    backbone: nn.Module
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {"backbone": ("backbone",), "heads": ("heads",)}

    def __init__(self, backbone: nn.Module, layout: CoeffLayout) -> None:
        super().__init__()
        self.backbone = backbone
        self.layout = layout
        self.input_normalized = isinstance(backbone, FeatureBackbone)
        if isinstance(backbone, FeatureBackbone):
            self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> backbone input (``(image - mean) / std`` or the image itself)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects a (B, 3, H, W) RGB image, got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a float image in [0, 1], got dtype {image.dtype}")
        if not self.input_normalized:
            return image
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


#: As MSMA's public code: id, exp, tz from stage 4; tex, angles from stage 3; SH, tx, ty from stage 2.
MSMA_HEAD_SCALES = HeadScales(id=2, exp=2, tex=1, angles=1, sh=0, txy=0, tz=2)
#: ``single_scale`` ablation: every head reads stage 4.
SINGLE_SCALE_HEADS = HeadScales(id=2, exp=2, tex=2, angles=2, sh=2, txy=2, tz=2)


class MSMASpatialEncoder(FaceEncoder):
    """msma's MSMA variant (``msma_spatial``): fused stages 2-4 kept spatial, attention, global-mean readout.

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

    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "backbone": ("backbone",),
        "fusion": ("proj", "exchange"),
        "attention": ("attn",),
        "heads": ("heads",),
    }

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
            raise ValueError(f"MSMASpatialEncoder needs a backbone returning 3 stages, got {n}")
        channels = tuple(int(c) for c in channels)
        if len(channels) != n or min(channels) < 1:
            raise ValueError(f"MSMASpatialEncoder channels must be {n} positive widths, got {list(channels)}")
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


def build_msma_spatial(
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
) -> MSMASpatialEncoder:
    """msma's MSMA variant on the three deepest stages of a timm backbone (see :class:`MSMASpatialEncoder`)."""
    body = create_backbone(backbone, (-3, -2, -1), pretrained, pretrained_path, allow_random_init)
    return MSMASpatialEncoder(
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
