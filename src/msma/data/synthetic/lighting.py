"""Per-pixel lighting of the rendered head: the sample's SH light plus a directional or point light with a
screen-space cast-shadow approximation and Blinn-Phong specular highlights.

The SH coefficients stored with a sample describe the ambient (low-frequency) part of the light; the extra light
is not part of the coefficients (as in real photos, where SH is an approximation). Shading is deferred: the
renderer interpolates albedo and normals, and this module shades each pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from msma.face_model.camera import PerspectiveCamera
from msma.face_model.shading import sh_basis, sh_coefficients


@dataclass(frozen=True)
class ExtraLight:
    """A directional (``point=False``) or point light added to the SH light.

    Attributes:
        vector: (3,) unit direction towards the light (directional) or the light position in mm (point), posed
            model frame (x right, y up, z towards the camera).
        point: whether ``vector`` is a position.
        colour: (3,) RGB intensity (irradiance of a surface facing the light, in the SH DC's units).
        specular: specular strength (0 = matte).
        shininess: Blinn-Phong exponent.
        shadow: cast-shadow strength in [0, 1] (1 = no light in shadow).
    """

    vector: Tensor
    point: bool
    colour: Tensor
    specular: float
    shininess: float
    shadow: float


def sample_extra_light(gen: torch.Generator, strength: float = 1.0) -> ExtraLight | None:
    """Draws the extra light of one sample (30 % none, 50 % directional, 20 % point light); 7 draws + 3 normals."""
    u = torch.rand(7, generator=gen)
    d = torch.randn(3, generator=gen) + torch.tensor([0.0, 0.5, 1.1])
    if float(u[0]) < 0.3 or strength <= 0:
        return None
    d = d / d.norm().clamp_min(1e-6)
    intensity = strength * (0.3 + 1.0 * float(u[1]))
    tint = torch.tensor([1.0, 0.97, 0.92]) + (float(u[2]) - 0.5) * torch.tensor([0.12, 0.0, -0.15])
    point = float(u[0]) > 0.8
    vector = d * (350.0 + 500.0 * float(u[3])) if point else d
    return ExtraLight(
        vector=vector,
        point=point,
        colour=tint * intensity,
        specular=0.02 + 0.25 * float(u[4]) ** 2,
        shininess=8.0 + 40.0 * float(u[5]),
        shadow=0.5 + 0.5 * float(u[6]),
    )


def pixel_positions(depth: Tensor, camera: PerspectiveCamera) -> Tensor:
    """Back-projects a depth map to model-frame positions.

    Args:
        depth: (1, S, S) distance from the camera along the view axis in mm (0 where empty).
        camera: the camera the depth was rendered with.

    Returns:
        (3, S, S) positions in mm (x right, y up, z towards the camera).
    """
    size = depth.shape[-1]
    f = camera.focal(size)
    c = size / 2.0 - 0.5
    v, u = torch.meshgrid(torch.arange(size, dtype=depth.dtype), torch.arange(size, dtype=depth.dtype), indexing="ij")
    d = depth[0]
    return torch.stack([(u - c) * d / f, -(v - c) * d / f, camera.distance - d])


def screen_space_shadow(
    depth: Tensor,
    coverage: Tensor,
    light: ExtraLight,
    camera: PerspectiveCamera,
    steps: int = 14,
    reach_mm: float = 70.0,
) -> Tensor:
    """Cast shadows approximated by marching the rendered depth map towards the light.

    A pixel is in shadow when a point of the ray from its surface point towards the light lies behind the
    rendered surface (farther from the camera by more than 2 mm, at most 40 mm: thin occluders such as the
    nose or an ear cast shadows, the face does not shadow itself through its own back).

    Args:
        depth: (1, S, S) rendered depth in mm (0 where empty).
        coverage: (1, S, S) coverage in [0, 1].
        light: the extra light.
        camera: the render camera.
        steps: ray-marching steps; reach_mm: ray length in mm.

    Returns:
        (1, S, S) visibility of the light in [0, 1] (1 = lit).
    """
    size = depth.shape[-1]
    pos = pixel_positions(depth, camera)  # (3, S, S)
    if light.point:
        to_light = light.vector[:, None, None] - pos
        to_light = to_light / to_light.norm(dim=0, keepdim=True).clamp_min(1e-6)
    else:
        to_light = light.vector[:, None, None].expand_as(pos)
    surf = torch.where(coverage > 0.5, depth, torch.full_like(depth, 1e6))[None]  # (1, 1, S, S)
    f = camera.focal(size)
    c = size / 2.0 - 0.5
    occluded = torch.zeros(size, size)
    for k in range(1, steps + 1):
        q = pos + to_light * (reach_mm * k / steps)
        qd = camera.distance - q[2]
        u = c + f * q[0] / qd.clamp_min(1.0)
        v = c - f * q[1] / qd.clamp_min(1.0)
        grid = torch.stack([(u + 0.5) / size * 2 - 1, (v + 0.5) / size * 2 - 1], dim=-1)[None]
        sd = F.grid_sample(surf, grid, mode="nearest", padding_mode="border", align_corners=False)[0, 0]
        behind = qd - sd
        occluded = torch.maximum(occluded, ((behind > 2.0) & (behind < 40.0)).float())
    vis = 1.0 - occluded
    # Soft shadow edges (penumbra).
    vis = F.avg_pool2d(vis[None, None], 3, stride=1, padding=1, count_include_pad=False)[0]
    return vis


def shade(
    albedo: Tensor,
    normals: Tensor,
    depth: Tensor,
    coverage: Tensor,
    sh: Tensor,
    light: ExtraLight | None,
    camera: PerspectiveCamera,
    ambient_occlusion: Tensor | None = None,
    specular_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Shades one rendered sample per pixel.

    Args:
        albedo: (3, S, S) albedo (not premultiplied).
        normals: (3, S, S) unit normals, posed model frame.
        depth: (1, S, S) depth in mm.
        coverage: (1, S, S) coverage in [0, 1].
        sh: (27,) the sample's SH coefficients (Deep3D layout, without the DC offset).
        light: the extra light or None.
        camera: the render camera.
        ambient_occlusion: (1, S, S) multiplier of all light (mouth interior), default 1.
        specular_weight: (1, S, S) specular reflectance weight, default 1.

    Returns:
        ``(colour, irradiance)``: (3, S, S) shaded colour (not premultiplied, not clamped above) and the
        (3, S, S) total irradiance.
    """
    n = normals.permute(1, 2, 0)  # (S, S, 3)
    gamma = sh_coefficients(sh[None])[0]  # (3, 9)
    irr = torch.einsum("hwk,ck->chw", sh_basis(n), gamma).clamp_min(0.0)
    spec = torch.zeros_like(albedo)
    if light is not None:
        pos = pixel_positions(depth, camera)
        if light.point:
            ldir = light.vector[:, None, None] - pos
            ldir = ldir / ldir.norm(dim=0, keepdim=True).clamp_min(1e-6)
        else:
            ldir = light.vector[:, None, None].expand_as(pos)
        vis = 1.0 - light.shadow * (1.0 - screen_space_shadow(depth, coverage, light, camera))
        ndotl = (normals * ldir).sum(0, keepdim=True).clamp_min(0.0)
        irr = irr + light.colour[:, None, None] * ndotl * vis
        view = torch.stack([-pos[0], -pos[1], camera.distance - pos[2]])
        view = view / view.norm(dim=0, keepdim=True).clamp_min(1e-6)
        half = ldir + view
        half = half / half.norm(dim=0, keepdim=True).clamp_min(1e-6)
        ndoth = (normals * half).sum(0, keepdim=True).clamp_min(0.0)
        norm = (light.shininess + 8.0) / (8.0 * math.pi)  # energy-normalised Blinn-Phong
        s = light.specular * norm * ndoth**light.shininess * vis * (ndotl > 0).float()
        if specular_weight is not None:
            s = s * specular_weight
        spec = light.colour[:, None, None] * s
    if ambient_occlusion is not None:
        irr = irr * ambient_occlusion
        spec = spec * ambient_occlusion
    return albedo * irr + spec, irr
