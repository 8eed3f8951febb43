"""Spherical-harmonics shading exactly as Deep3DFaceRecon_pytorch (``models/bfm.py``: ``SH``, ``compute_color``).

Irradiance per colour channel is ``sum_k Y_k(n) * gamma_k`` with the 9 real SH basis functions of bands 0..2
pre-multiplied by the Lambertian convolution factors ``a`` and normalisation constants ``c``:

* ``a = [pi, 2 pi / sqrt(3), 2 pi / sqrt(8)]``,
* ``c = [1 / sqrt(4 pi), sqrt(3) / sqrt(4 pi), 3 sqrt(5) / sqrt(12 pi)]``,

and ``gamma`` = the network's ``sh`` coefficients reshaped channel-major ``(B, 3, 9)`` plus Deep3D's initial
light ``0.8`` on each channel's DC term. All-zero ``sh`` therefore gives a uniform ambient light and
``color = 0.8 * a0 * c0 * albedo = 0.4 * sqrt(pi) * albedo ~= 0.709 * albedo``. Normals are in the posed model frame (x right, y up, z towards
the camera), the frame Deep3D shades in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Lambertian band factors (Deep3D ``SH.a``).
SH_A: tuple[float, float, float] = (math.pi, 2.0 * math.pi / math.sqrt(3.0), 2.0 * math.pi / math.sqrt(8.0))
#: SH normalisation constants (Deep3D ``SH.c``).
SH_C: tuple[float, float, float] = (
    1.0 / math.sqrt(4.0 * math.pi),
    math.sqrt(3.0) / math.sqrt(4.0 * math.pi),
    3.0 * math.sqrt(5.0) / math.sqrt(12.0 * math.pi),
)
#: Deep3D's ``init_lit``: added to the DC coefficient of each colour channel.
SH_DC_OFFSET = 0.8
#: Number of SH coefficients per colour channel (bands 0..2).
SH_BANDS = 9


def sh_basis(normals: Tensor) -> Tensor:
    """The 9 scaled SH basis values at unit normals, Deep3D's order and signs.

    Args:
        normals: (..., 3) unit normals (x right, y up, z towards the camera).

    Returns:
        (..., 9) ``Y`` such that irradiance = ``Y @ gamma`` for one colour channel.
    """
    (a0, a1, a2), (c0, c1, c2) = SH_A, SH_C
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    return torch.stack(
        [
            torch.full_like(x, a0 * c0),
            -a1 * c1 * y,
            a1 * c1 * z,
            -a1 * c1 * x,
            a2 * c2 * x * y,
            -a2 * c2 * y * z,
            0.5 * a2 * c2 / math.sqrt(3.0) * (3.0 * z * z - 1.0),
            -a2 * c2 * x * z,
            0.5 * a2 * c2 * (x * x - y * y),
        ],
        dim=-1,
    )


def sh_coefficients(sh: Tensor) -> Tensor:
    """Flat ``sh`` (B, 27) -> Deep3D's ``gamma`` (B, 3, 9) including the +0.8 DC offset."""
    if sh.ndim != 2 or sh.shape[1] != 3 * SH_BANDS:
        raise ValueError(f"sh must be (B, 27) (3 channels x 9 bands, channel-major), got {tuple(sh.shape)}")
    gamma = sh.reshape(sh.shape[0], 3, SH_BANDS)
    offset = torch.zeros(SH_BANDS, dtype=sh.dtype, device=sh.device)
    offset[0] = SH_DC_OFFSET
    return gamma + offset


def sh_irradiance(normals: Tensor, sh: Tensor) -> Tensor:
    """Per-vertex RGB irradiance.

    Args:
        normals: (B, N, 3) unit normals, posed model frame.
        sh: (B, 27) channel-major SH coefficients without the DC offset.

    Returns:
        (B, N, 3) irradiance per colour channel (not clamped).
    """
    if normals.ndim != 3 or normals.shape[-1] != 3:
        raise ValueError(f"normals must be (B, N, 3), got {tuple(normals.shape)}")
    gamma = sh_coefficients(sh)  # (B, 3, 9)
    return torch.einsum("bnk,bck->bnc", sh_basis(normals), gamma)


def sh_shade(albedo: Tensor, normals: Tensor, sh: Tensor) -> Tensor:
    """Deep3D's Lambertian SH shading ``color = irradiance(n) * albedo``.

    Args:
        albedo: (B, N, 3) per-vertex albedo, RGB in [0, 1].
        normals: (B, N, 3) unit normals in the posed model frame.
        sh: (B, 27) channel-major SH coefficients without the +0.8 DC offset.

    Returns:
        (B, N, 3) shaded colour (not clamped; :class:`~msma.face_model.model.FaceModel` clamps to >= 0).
    """
    if albedo.shape != normals.shape:
        raise ValueError(f"albedo {tuple(albedo.shape)} and normals {tuple(normals.shape)} must have the same shape")
    return sh_irradiance(normals, sh) * albedo
