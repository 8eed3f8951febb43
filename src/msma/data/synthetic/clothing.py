"""Clothing at the bottom of the crop: shoulders and a collar below the neck, textured and shaded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from msma.data.landmark_index import CHIN, JAW_LEFT_END, JAW_RIGHT_END, NASION


def clothing_layer(landmarks: Tensor, size: int, r: Tensor, texture: Tensor) -> tuple[Tensor, Tensor]:
    """Shoulders below the neck (behind the face, in front of the neck and background).

    The torso is a shape that widens from the base of the neck to the image border, with a round, V or high
    (turtleneck) collar; colour, stripes / fabric noise and a side-to-side shading gradient are random.

    Args:
        landmarks: (68, 2) projected landmarks (pixels).
        size: image size S.
        r: (10,) uniform draws (column 0: 15 % of samples have no clothing in the crop).
        texture: (1, s, s) value noise in [0, 1] (fabric).

    Returns:
        ``(rgb (3, S, S), alpha (1, S, S))``.
    """
    zeros = torch.zeros(1, size, size)
    if float(r[0]) < 0.15 or not bool(torch.isfinite(landmarks).all()):
        return torch.zeros(3, size, size), zeros
    chin, nasion = landmarks[CHIN], landmarks[NASION]
    up = nasion - chin
    h = float(up.norm().clamp_min(4.0))
    up = up / h
    # Shoulders stay roughly horizontal in the image even when the head turns or tilts: blend towards image up.
    up = torch.nn.functional.normalize(0.4 * up + 0.6 * torch.tensor([0.0, -1.0]), dim=0)
    side = torch.stack([-up[1], up[0]])
    w = float((landmarks[JAW_LEFT_END] - landmarks[JAW_RIGHT_END]).norm().clamp_min(0.6 * h))
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    dx, dy = xs - float(chin[0]), ys - float(chin[1])
    below = -(dx * float(up[0]) + dy * float(up[1]))  # pixels below the chin
    across = dx * float(side[0]) + dy * float(side[1])
    start = h * (0.35 + 0.35 * float(r[1]))  # where the shoulders begin below the chin
    halfw = 0.45 * w + torch.clamp(below - start, min=0.0) * (2.0 + 2.0 * float(r[2]))
    body = torch.sigmoid((halfw - across.abs()) / 1.5) * torch.sigmoid((below - start) / 1.5)
    style = float(r[3])
    if style < 0.4:  # round collar: cut a disc at the neck
        neck_cut = torch.sigmoid((0.3 * w - torch.sqrt(across**2 + (below - start) ** 2)) / 1.5)
        body = body * (1 - neck_cut)
    elif style < 0.7:  # V neck
        v = torch.sigmoid((0.3 * w - across.abs() - (below - start) * 0.6) / 1.5) * torch.sigmoid(
            (below - start + 2) / 1.5
        )
        body = body * (1 - v)
    else:  # high collar up the neck
        collar = torch.sigmoid((0.34 * w - across.abs()) / 1.5) * torch.sigmoid((below - start + 0.25 * h) / 1.5)
        body = torch.maximum(body, collar)
    g = torch.Generator().manual_seed(int(float(r[4]) * 1e9))
    colour = torch.rand(3, generator=g)
    colour = colour.mean() + (colour - colour.mean()) * float(r[5])
    colour = colour * (0.25 + 0.8 * float(r[6]))
    fab = F.interpolate(texture[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    pattern = 0.85 + 0.3 * fab
    if float(r[7]) < 0.3:  # stripes
        period = 3.0 + 12.0 * float(r[8])
        pattern = pattern * (0.8 + 0.4 * (torch.sin((across * 0.3 + below) / period * 6.283) > 0).float())
    shade = 1.0 + 0.35 * (float(r[9]) - 0.5) * across / max(w, 1.0) - 0.15 * (below / size)
    rgb = (colour[:, None, None] * pattern * shade).clamp(0.0, 1.0)
    return rgb, body.clamp(0.0, 1.0)
