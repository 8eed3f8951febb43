"""Structured config of the encoders (the Hydra ``model`` group schema) and its builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msma.face_model.params import CoeffLayout
from msma.models.encoder import FaceEncoder
from msma.models.lka import LKAChain
from msma.models.registry import build_encoder

__all__ = ["EncoderConfig", "build_encoder_from_config"]


@dataclass
class EncoderConfig:
    """Every option of every encoder; options of other encoders are ignored.

    Attributes:
        name: the authors' networks ``msma_lka`` | ``mlanet`` | ``deep3d_r50``, or msma's variants
            ``msma_spatial`` | ``mlanet_timm`` (docs/models.md).
        backbone: authors' networks: ``resnet50`` (theirs), ``resnet18``/``resnet34`` (torchvision layout);
            variants: a timm model name (``features_only`` support; ``mlanet_timm`` needs a ResNet).
        pretrained: load ImageNet weights (authors' networks: torchvision's checkpoint from pretrained_path, the
            torch hub cache or a download; variants: timm's, from a local file, timm's cache or a download).
        pretrained_path: local ``.safetensors``/``.pth`` weights; implies pretrained.
        allow_random_init: warn and continue with random weights when pretrained weights are unavailable.
        channels: msma_spatial: widths stages 2, 3, 4 are projected to (divisible by the number of MLKA chains).
        attention: msma_spatial: ``mlka`` | ``lka`` | ``none``.
        fusion: msma_spatial: HRNet exchange between scales.
        attention_on_pooled: msma_spatial: attention on maps pooled to 1x1 (msma's ablation; in the authors'
            MSMA the maps that reach MLKA are spatial).
        single_scale: msma_spatial: all heads read stage 4.
        lka_kernel, lka_dilated_kernel, lka_dilation: msma_spatial with ``attention=lka`` (VAN: 5, 7, 3).
        mlka_kernels, mlka_dilated_kernels, mlka_dilations: msma_spatial MLKA chains (MAN/MSMA: 3/5/7, 5/7/9, 2/3/4).
        mlka_gate_kernels: MLKA gate kernels (default: the chains' first kernels, 3/5/7).
        fused_channels: mlanet_timm (256).
        aff_reduction, ca_reduction: mlanet and mlanet_timm (4, 32).
    """

    name: str = "msma_lka"
    backbone: str = "resnet50"
    pretrained: bool = False
    pretrained_path: str | None = None
    allow_random_init: bool = False
    channels: list[int] = field(default_factory=lambda: [96, 192, 384])
    attention: str = "mlka"
    fusion: bool = True
    attention_on_pooled: bool = False
    single_scale: bool = False
    lka_kernel: int = 5
    lka_dilated_kernel: int = 7
    lka_dilation: int = 3
    mlka_kernels: list[int] = field(default_factory=lambda: [3, 5, 7])
    mlka_dilated_kernels: list[int] = field(default_factory=lambda: [5, 7, 9])
    mlka_dilations: list[int] = field(default_factory=lambda: [2, 3, 4])
    mlka_gate_kernels: list[int] | None = None
    fused_channels: int = 256
    aff_reduction: int = 4
    ca_reduction: int = 32


def build_encoder_from_config(cfg: EncoderConfig, layout: CoeffLayout) -> FaceEncoder:
    """Builds the encoder ``cfg.name`` with the options that apply to it (an OmegaConf node works too)."""
    common: dict[str, Any] = dict(
        backbone=str(cfg.backbone),
        pretrained=bool(cfg.pretrained),
        pretrained_path=str(cfg.pretrained_path) if cfg.pretrained_path else None,
        allow_random_init=bool(cfg.allow_random_init),
    )
    if cfg.name == "msma_spatial":
        lengths = {len(cfg.mlka_kernels), len(cfg.mlka_dilated_kernels), len(cfg.mlka_dilations)}
        if len(lengths) != 1:
            raise ValueError(
                "EncoderConfig: mlka_kernels, mlka_dilated_kernels and mlka_dilations must have the same length, got "
                f"{list(cfg.mlka_kernels)}, {list(cfg.mlka_dilated_kernels)}, {list(cfg.mlka_dilations)}"
            )
        chains = tuple(
            LKAChain(int(k), int(kd), int(d))
            for k, kd, d in zip(cfg.mlka_kernels, cfg.mlka_dilated_kernels, cfg.mlka_dilations)
        )
        return build_encoder(
            cfg.name,
            layout,
            **common,
            channels=tuple(int(c) for c in cfg.channels),
            attention=cfg.attention,
            fusion=bool(cfg.fusion),
            attention_on_pooled=bool(cfg.attention_on_pooled),
            single_scale=bool(cfg.single_scale),
            lka_chain=LKAChain(int(cfg.lka_kernel), int(cfg.lka_dilated_kernel), int(cfg.lka_dilation)),
            mlka_chains=chains,
            mlka_gate_kernel_sizes=None
            if cfg.mlka_gate_kernels is None
            else tuple(int(g) for g in cfg.mlka_gate_kernels),
        )
    if cfg.name == "mlanet_timm":
        return build_encoder(
            cfg.name,
            layout,
            **common,
            fused_channels=int(cfg.fused_channels),
            aff_reduction=int(cfg.aff_reduction),
            ca_reduction=int(cfg.ca_reduction),
        )
    if cfg.name == "mlanet":
        return build_encoder(
            cfg.name, layout, **common, aff_reduction=int(cfg.aff_reduction), ca_reduction=int(cfg.ca_reduction)
        )
    return build_encoder(cfg.name, layout, **common)
