"""Random greyscale conversion of the network's input: black-and-white photos are in-the-wild photos too.

Old and archival photos, many press and surveillance images and some benchmark images (AFLW, the faces68 examples
``einstein.jpg`` and ``takeo.ppm``) are single-channel. :func:`msma.data.io.load_image` replicates their luma into
R = G = B, an input the synthetic training data never shows: its faces, colour jitter and random convolutions
(:mod:`msma.data.randconv`, which keeps each channel's mean and spread) all stay coloured. This augmentation turns a
random subset of the training batch into exactly what such a photo becomes on loading: the ITU-R BT.601 luma
``0.299 R + 0.587 G + 0.114 B`` (Pillow's ``convert("L")``) in all three channels.

Like RandConv it changes the encoder's input only; the losses compare the prediction with the clean, coloured
image (albedo and light keep their colour supervision).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: ITU-R BT.601 luma weights of R, G, B (Pillow's "L" conversion).
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


class RandomGrayscale:
    """Converts each image of a batch to greyscale with probability ``p``.

    Args:
        p: probability that an image becomes greyscale (others pass unchanged).

    Raises:
        ValueError: ``p`` outside [0, 1].
    """

    def __init__(self, p: float = 0.2) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"grayscale probability must be in [0, 1], got {p}")
        self.p = float(p)

    def __repr__(self) -> str:
        return f"RandomGrayscale(p={self.p})"

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        """Greys a random subset of the batch.

        Args:
            image: (B, 3, H, W) float RGB in [0, 1].
            generator: a CPU generator; the only random draw (B uniforms) comes from it.

        Returns:
            (B, 3, H, W), same dtype and device; chosen rows hold their luma in every channel; the input is not
            modified.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"grayscale expects (B, 3, H, W) images, got {tuple(image.shape)}")
        chosen = torch.rand(image.shape[0], generator=generator) < self.p
        out = image.clone()
        rows = torch.nonzero(chosen).flatten().to(image.device)
        if rows.numel() == 0:
            return out
        w = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=image.device).view(1, 3, 1, 1)
        luma = (image[rows].float() * w).sum(1, keepdim=True)
        out[rows] = luma.expand(-1, 3, -1, -1).to(image.dtype)
        return out
