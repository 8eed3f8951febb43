"""Encoder registry: ``build_encoder(name, layout, ...)``.

The authors' networks: ``msma_lka`` (MSMA), ``mlanet`` (MLANet), ``deep3d_r50`` (Deep3DFaceRecon). msma's own
variants: ``msma_spatial`` (with its ablation options) and ``mlanet_timm``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from msma.face_model.params import CoeffLayout
from msma.models.deep3d import build_deep3d
from msma.models.encoder import FaceEncoder, build_msma_spatial
from msma.models.lka import LKAChain
from msma.models.mlanet import build_mlanet, build_mlanet_timm
from msma.models.msma import build_msma

__all__ = ["ENCODERS", "PAPER_ENCODERS", "available_encoders", "build_encoder"]

#: name -> builder(layout, backbone, pretrained, pretrained_path, allow_random_init, **arch_kwargs).
ENCODERS: dict[str, Callable[..., FaceEncoder]] = {
    "msma_lka": build_msma,
    "mlanet": build_mlanet,
    "deep3d_r50": build_deep3d,
    "msma_spatial": build_msma_spatial,
    "mlanet_timm": build_mlanet_timm,
}

#: The authors' networks (torchvision-layout ResNet, [0, 1] input); the others are msma's variants on timm.
PAPER_ENCODERS: tuple[str, ...] = ("msma_lka", "mlanet", "deep3d_r50")


def available_encoders() -> tuple[str, ...]:
    """Registered encoder names."""
    return tuple(ENCODERS)


def _as_chain(value: Any, what: str) -> LKAChain:
    if isinstance(value, LKAChain):
        return value
    if isinstance(value, Sequence) and len(value) == 3:
        return LKAChain(int(value[0]), int(value[1]), int(value[2]))
    raise ValueError(f"{what} must be an LKAChain or (kernel, dilated_kernel, dilation), got {value!r}")


def build_encoder(
    name: str,
    layout: CoeffLayout,
    backbone: str = "resnet50",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
    **arch_kwargs: Any,
) -> FaceEncoder:
    """Builds an encoder by name.

    Args:
        name: ``"msma_lka"`` | ``"mlanet"`` | ``"deep3d_r50"`` (the authors' networks) | ``"msma_spatial"`` |
            ``"mlanet_timm"`` (msma's variants).
        layout: coefficient layout of the face model (``FaceModel.layout``).
        backbone: the authors' networks: ``resnet50`` (theirs) or ``resnet18`` / ``resnet34`` (torchvision
            layout); the variants: a timm model name with ``features_only`` support (``mlanet_timm``: a ResNet).
        pretrained: ImageNet weights: torchvision's checkpoint for the authors' networks (file, torch hub cache or
            download), timm's for the variants (local file, timm cache, or download unless ``HF_HUB_OFFLINE``).
        pretrained_path: local weights file; implies pretrained.
        allow_random_init: warn instead of failing when pretrained weights are unavailable.
        **arch_kwargs: encoder-specific options: ``msma_spatial``: channels, attention, fusion,
            attention_on_pooled, single_scale, lka_chain, mlka_chains (LKAChain or (k, k_dilated, d) triples),
            mlka_gate_kernel_sizes; ``mlanet``: aff_reduction, ca_reduction; ``mlanet_timm``: fused_channels,
            aff_reduction, ca_reduction; ``msma_lka``, ``deep3d_r50``: none.

    Returns:
        A :class:`FaceEncoder`: ``forward(image (B, 3, H, W) float RGB in [0, 1]) -> FaceParams``. Works on
        ``channels_last`` inputs and under bf16 autocast.

    Raises:
        ValueError: unknown name or option.
        msma.models.backbone.PretrainedWeightsError: pretrained weights unavailable (see ``allow_random_init``).
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}")
    if "lka_chain" in arch_kwargs:
        arch_kwargs["lka_chain"] = _as_chain(arch_kwargs["lka_chain"], "lka_chain")
    if "mlka_chains" in arch_kwargs:
        arch_kwargs["mlka_chains"] = tuple(_as_chain(c, "mlka_chains entry") for c in arch_kwargs["mlka_chains"])
    try:
        return ENCODERS[name](
            layout,
            backbone=backbone,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            allow_random_init=allow_random_init,
            **arch_kwargs,
        )
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ValueError(f"encoder {name!r}: {err}") from err
        raise
