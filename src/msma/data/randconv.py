"""Random convolutions of the network's input (RandConv), a domain-generalisation augmentation.

Xu, Liu, Yang and Niethammer, "Robust and Generalizable Visual Representation Learning via Random Convolutions",
ICLR 2021: each training image is filtered by a freshly drawn random convolution layer (3 -> 3 channels, kernel
size drawn from {1, 3, 5, 7}, weights from N(0, 1 / (k^2 * 3)), i.e. Kaiming-normal), which keeps the shapes of
the image and scrambles its local texture and colours; the mixing variant blends the result with the original by
a weight alpha ~ U(0, 1). A network trained on synthetic images this way learns to rely on shape more than on the
rendering's texture and shading, which is what transfers to photos.

msma applies it to the encoder's input only: the losses (photometric, landmarks, coefficients) still compare the
prediction with the clean image and its exact labels. Each filtered image keeps its per-channel mean and standard
deviation (the exposure statistics the network also sees in photos) and is clipped to [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Kernel sizes drawn from (the paper's multi-scale setting, RC_img1-7).
KERNEL_SIZES: tuple[int, ...] = (1, 3, 5, 7)


class RandomConvolution:
    """RandConv with mixing on a batch of images.

    Args:
        p: probability that an image is filtered (others pass unchanged); the paper's default 0.5.
        kernel_sizes: odd kernel sizes to draw from.
        mix: blend filtered and original images with alpha ~ U(0, 1) (the paper's RC_mix); False: the filtered
            image alone.

    Raises:
        ValueError: ``p`` outside [0, 1], or an even / non-positive kernel size.
    """

    def __init__(self, p: float = 0.5, kernel_sizes: tuple[int, ...] = KERNEL_SIZES, mix: bool = True) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"randconv probability must be in [0, 1], got {p}")
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"randconv kernel sizes must be odd and positive, got {list(kernel_sizes)}")
        self.p = float(p)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.mix = bool(mix)

    def __repr__(self) -> str:
        return f"RandomConvolution(p={self.p}, kernel_sizes={self.kernel_sizes}, mix={self.mix})"

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        """Filters a random subset of the batch.

        Args:
            image: (B, 3, S, S) float RGB in [0, 1].
            generator: a CPU generator; every random draw comes from it (the same generator state gives the same
                output on any device).

        Returns:
            (B, 3, S, S) in [0, 1], same dtype and device; the input is not modified.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"randconv expects (B, 3, H, W) images, got {tuple(image.shape)}")
        b = image.shape[0]
        chosen = torch.rand(b, generator=generator) < self.p
        sizes = torch.randint(len(self.kernel_sizes), (b,), generator=generator)
        alpha = torch.rand(b, generator=generator) if self.mix else torch.zeros(b)
        out = image.clone()
        for j, k in enumerate(self.kernel_sizes):
            rows = torch.nonzero(chosen & (sizes == j)).flatten()
            if rows.numel() == 0:
                continue
            n = rows.numel()
            std = 1.0 / math.sqrt(k * k * 3)
            weight = torch.randn(n * 3, 3, k, k, generator=generator) * std
            idx = rows.to(image.device)
            x = image[idx].float()
            flat = x.reshape(1, n * 3, *x.shape[-2:])
            if k > 1:
                flat = F.pad(flat, (k // 2,) * 4, mode="reflect")
            y = F.conv2d(flat, weight.to(image.device), groups=n).reshape_as(x)
            y = _match_statistics(y, x)
            a = alpha[rows].to(image.device).view(-1, 1, 1, 1)
            out[idx] = (a * x + (1.0 - a) * y).clamp(0.0, 1.0).to(image.dtype)
        return out


def _match_statistics(y: Tensor, x: Tensor, eps: float = 1e-6) -> Tensor:
    """``y`` (N, 3, H, W) shifted and scaled per image and channel to the mean and standard deviation of ``x``."""
    ym, ys = y.mean((2, 3), keepdim=True), y.std((2, 3), keepdim=True)
    xm, xs = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
    return (y - ym) / (ys + eps) * xs + xm
