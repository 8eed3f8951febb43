"""Procedural backgrounds (gradients, value noise, blobs, stripes, checkerboards, defocus) and value noise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a (C, H, W) image (reflect padding)."""
    if sigma < 0.3:
        return img
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    out = F.pad(img[None], (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


def _random_colour(gen: torch.Generator) -> Tensor:
    """A random RGB colour (3,), sometimes desaturated (walls, sky, clothing)."""
    c = torch.rand(3, generator=gen)
    grey = c.mean()
    sat = float(torch.rand(1, generator=gen))
    return grey + (c - grey) * sat


def value_noise(gen: torch.Generator, size: int, channels: int, octaves: int = 4) -> Tensor:
    """Multi-octave value noise in [0, 1], (channels, size, size)."""
    out = torch.zeros(channels, size, size)
    total = 0.0
    for o in range(octaves):
        n = 2 ** (o + 2)
        grid = torch.rand(1, channels, n + 1, n + 1, generator=gen)
        up = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0]
        amp = 0.5**o
        out += amp * up
        total += amp
    return (out / total).clamp(0.0, 1.0)


def procedural_background(size: int, generator: torch.Generator) -> Tensor:
    """A random procedural background, (3, size, size) float32 RGB in [0, 1].

    A base layer (linear gradient, radial gradient or coloured value noise), optionally overlaid with soft
    ellipses (blobs), stripes or a checkerboard, a fine noise texture, and a defocus blur.
    """
    gen = generator
    full = size
    size = max(16, full // 2)  # drawn at half resolution (smooth content), upsampled at the end
    ys, xs = torch.meshgrid(
        torch.linspace(-1.0, 1.0, size), torch.linspace(-1.0, 1.0, size), indexing="ij"
    )  # (s, s) each
    r = torch.rand(8, generator=gen)
    c0, c1 = _random_colour(gen), _random_colour(gen)
    theta = float(torch.rand(1, generator=gen)) * 2.0 * math.pi
    centre = torch.rand(2, generator=gen) * 2.0 - 1.0
    kind = int(r[0] * 3)
    if kind == 0:
        t = ((xs * math.cos(theta) + ys * math.sin(theta)) * 0.5 + 0.5).clamp(0, 1)
    elif kind == 1:
        t = (((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2).sqrt() / 2.0).clamp(0, 1)
    else:
        t = value_noise(gen, size, 1)[0]
    img = c0[:, None, None] * (1.0 - t) + c1[:, None, None] * t
    colour_noise = value_noise(gen, size, 3)
    img = img + (colour_noise - 0.5) * 0.25 * float(r[1])

    # Overlays (draws are made whatever the branch so later draws do not shift with the branch taken).
    n_blobs = 2 + int(torch.randint(0, 8, (1,), generator=gen))
    blob_params = torch.rand(n_blobs, 6, generator=gen)
    blob_colours = torch.stack([_random_colour(gen) for _ in range(n_blobs)])
    freq = 2.0 + 14.0 * float(torch.rand(1, generator=gen))
    phase = float(torch.rand(1, generator=gen)) * 2.0 * math.pi
    stripe_colour = _random_colour(gen)
    overlay = float(r[2])
    if overlay < 0.4:  # blobs
        for p, col in zip(blob_params, blob_colours):
            cx, cy = p[0] * 2.4 - 1.2, p[1] * 2.4 - 1.2
            ax, ay = 0.1 + 0.6 * p[2], 0.1 + 0.6 * p[3]
            ang = float(p[4]) * math.pi
            dx, dy = xs - cx, ys - cy
            u = (dx * math.cos(ang) + dy * math.sin(ang)) / ax
            v = (-dx * math.sin(ang) + dy * math.cos(ang)) / ay
            alpha = torch.sigmoid((1.0 - (u * u + v * v)) * (4.0 + 20.0 * float(p[5])))
            img = img * (1.0 - alpha) + col[:, None, None] * alpha
    elif overlay < 0.6:  # stripes
        u = xs * math.cos(theta + 1.0) + ys * math.sin(theta + 1.0)
        alpha = (torch.sin(u * freq * math.pi + phase) > 0).float() * (0.3 + 0.5 * float(r[3]))
        img = img * (1.0 - alpha) + stripe_colour[:, None, None] * alpha
    elif overlay < 0.7:  # checkerboard
        u = xs * math.cos(theta) + ys * math.sin(theta)
        v = -xs * math.sin(theta) + ys * math.cos(theta)
        alpha = ((torch.sin(u * freq * math.pi) * torch.sin(v * freq * math.pi + phase)) > 0).float()
        alpha = alpha * (0.3 + 0.5 * float(r[3]))
        img = img * (1.0 - alpha) + stripe_colour[:, None, None] * alpha
    img = _gaussian_blur(img, 1.5 * float(r[5]) ** 2)
    if size != full:
        img = F.interpolate(img[None], size=(full, full), mode="bilinear", align_corners=False)[0]
    fine = torch.rand(1, full, full, generator=gen) - 0.5
    img = img + fine * 0.08 * float(r[4])
    return img.clamp(0.0, 1.0).to(torch.float32)
