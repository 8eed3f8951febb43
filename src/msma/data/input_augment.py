"""Augmentations of the encoder's input alone (the losses see the clean image): their common call signature and
their composition, as the training module applies them (:meth:`msma.training.module.FaceReconModule.encoder_input`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class InputAugment(Protocol):
    """``(image (B, 3, H, W) in [0, 1], generator) -> augmented image`` of the same shape; every random draw comes
    from ``generator`` (a resumed run draws what the original would)."""

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor: ...


class ChainedInputAugment:
    """Several input augmentations applied in order, drawing from one generator.

    Args:
        parts: the augmentations (at least one).
    """

    def __init__(self, parts: Sequence[InputAugment]) -> None:
        if not parts:
            raise ValueError("ChainedInputAugment needs at least one augmentation")
        self.parts = tuple(parts)

    def __repr__(self) -> str:
        return f"ChainedInputAugment({list(self.parts)!r})"

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        for part in self.parts:
            image = part(image, generator)
        return image


def build_input_augment(randconv: float, grayscale: float) -> InputAugment | None:
    """The encoder-input augmentation of ``data.randconv`` and ``data.grayscale`` (probabilities; 0 = off):
    RandConv first, then greyscale (so a greyed image is exactly grey), None when both are off.

    Raises:
        ValueError: a probability outside [0, 1] (named).
    """
    from msma.data.grayscale import RandomGrayscale
    from msma.data.randconv import RandomConvolution

    parts: list[InputAugment] = []
    if randconv != 0:
        parts.append(RandomConvolution(randconv))
    if grayscale != 0:
        parts.append(RandomGrayscale(grayscale))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else ChainedInputAugment(parts)
