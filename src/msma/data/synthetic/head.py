"""The rendered head: the face model's face plus its context mesh (skull, ears, neck, teeth, gums, tongue),
rasterised together so the face occludes (and is occluded by) the rest of the head, and the hair on the scalp.

Labels stay the face model's: the skin channel is the face model's per-vertex skin weight on face triangles and
0 on every context triangle, so the skin mask covers only the rendered face region the losses use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from msma.face_model.context import PART_GUMS, PART_SKIN, PART_TEETH
from msma.face_model.model import FaceModel
from msma.face_model.normals import mesh_vertex_normals
from msma.face_model.output import FaceOutput
from msma.face_model.params import FaceParams
from msma.face_model.rotation import euler_to_matrix, rotate
from msma.render.renderer import MeshRenderer

#: Hair colours (RGB in [0, 1]): black, dark brown, brown, light brown, blond, auburn, grey, dyed red/blue.
HAIR_RGB = torch.tensor(
    [
        [0.04, 0.035, 0.03],
        [0.13, 0.08, 0.05],
        [0.26, 0.17, 0.11],
        [0.42, 0.30, 0.20],
        [0.70, 0.57, 0.36],
        [0.42, 0.18, 0.09],
        [0.58, 0.57, 0.55],
        [0.45, 0.10, 0.12],
    ]
)
#: Draw weights of :data:`HAIR_RGB` (dark hair is the most common).
HAIR_P = torch.tensor([0.30, 0.22, 0.15, 0.09, 0.08, 0.06, 0.07, 0.03])

# Render channels: albedo (3), skin weight (1), hair weight (1), face flag (1), ambient occlusion (1), specular (1).
_C_ALB, _C_SKIN, _C_HAIR, _C_FACE, _C_AO, _C_SPEC = slice(0, 3), 3, 4, 5, 6, 7


@dataclass(frozen=True)
class HeadRender:
    """Rasterised attributes of a batch of heads (image layout, not premultiplied where ``coverage`` > 0).

    Attributes:
        coverage: (B, 1, S, S) coverage of face + context in [0, 1] (antialiased).
        face: (B, 1, S, S) coverage of the face model's own triangles (premultiplied by ``coverage``).
        skin: (B, 1, S, S) face-model skin weight x coverage (the label's skin mask before occluders).
        hair: (B, 1, S, S) scalp weight x coverage.
        albedo: (B, 3, S, S) albedo.
        normals: (B, 3, S, S) unit normals, posed model frame.
        depth: (B, 1, S, S) depth in mm (0 where empty).
        ambient_occlusion: (B, 1, S, S) light multiplier (mouth interior).
        specular: (B, 1, S, S) specular weight.
    """

    coverage: Tensor
    face: Tensor
    skin: Tensor
    hair: Tensor
    albedo: Tensor
    normals: Tensor
    depth: Tensor
    ambient_occlusion: Tensor
    specular: Tensor


def context_colours(model: FaceModel, face: FaceOutput, draws: Tensor) -> tuple[Tensor, Tensor]:
    """Per-vertex albedo and attributes of the context mesh.

    Args:
        model: face model with a ``context``.
        face: the face model's output (B rows).
        draws: (B, 4) uniform draws (teeth shade, gum shade, scalp skin shade, spare).

    Returns:
        ``(albedo (B, M, 3), attrs (B, M, 3))``: attrs are hair weight, ambient occlusion, specular weight.
    """
    ctx = model.context
    assert ctx is not None
    dev = face.albedo.device
    part = torch.as_tensor(ctx.part, device=dev)
    ref = torch.as_tensor(ctx.face_ref, device=dev)
    mf = ref.shape[0]
    b, m = face.albedo.shape[0], ctx.n_vertices
    skin_w = model.skin_mask.to(dev)
    w = (skin_w > 0.95).float()
    skin_rgb = (face.albedo * w[None, :, None]).sum(1) / w.sum().clamp_min(1.0)  # (B, 3)
    alb = skin_rgb[:, None, :] * (0.93 + 0.1 * draws[:, 2:3, None]).expand(b, m, 3)
    alb = alb.clone()
    alb[:, :mf] = face.albedo[:, ref]  # ears / neck front: the face model's own albedo (seamless at the border)
    teeth = torch.tensor([0.86, 0.82, 0.70], device=dev)[None] * (0.65 + 0.35 * draws[:, 0:1])
    gums = torch.tensor([0.62, 0.24, 0.24], device=dev)[None] * (0.6 + 0.4 * draws[:, 1:2])
    alb[:, part == PART_TEETH] = teeth[:, None, :]
    alb[:, part == PART_GUMS] = gums[:, None, :]
    hair = torch.as_tensor(ctx.hair, device=dev)[None].expand(b, m)
    ao = torch.ones(m, device=dev)
    ao[part == PART_TEETH] = 0.55
    ao[part == PART_GUMS] = 0.35
    spec = torch.where(part == PART_SKIN, 0.8, 0.5).to(dev)
    attrs = torch.stack([hair, ao[None].expand(b, m), spec[None].expand(b, m)], dim=-1)
    return alb.clamp(0.0, 1.0), attrs


@torch.no_grad()
def render_head(
    model: FaceModel, params: FaceParams, face: FaceOutput, size: int, renderer: MeshRenderer, draws: Tensor
) -> HeadRender:
    """Rasterises the face and, when the model has one, its context mesh in one pass (shared depth test).

    Args:
        model: the face model (``model.context`` may be None: then only the face is rendered).
        params: the coefficients of ``face`` (B rows).
        face: ``model(params, size)``.
        size: image size S.
        renderer: the rasteriser.
        draws: (B, 4) uniform draws for :func:`context_colours`.
    """
    b, n = face.albedo.shape[:2]
    dev = face.albedo.device
    skin_w = model.skin_mask.to(dev)[None, :, None].expand(b, n, 1)
    ones = torch.ones(b, n, 1, device=dev)
    face_ch = torch.cat([face.albedo.clamp(0.0, 1.0), skin_w, 0 * ones, ones, ones, ones], dim=-1)
    verts, normals, channels, tri = face.vertices, face.normals, face_ch, model.tri
    ctx = model.context
    if ctx is not None:
        canonical = ctx.canonical(face.vertices_canonical, params.id.to(dev), params.exp.to(dev))
        ctri = torch.as_tensor(ctx.tri, device=dev)
        rot = euler_to_matrix(params.angles.to(dev))
        cverts = rotate(canonical, rot) + params.trans.to(dev)[:, None, :]
        cnormals = rotate(mesh_vertex_normals(canonical, ctri), rot)
        calb, attrs = context_colours(model, face, draws.to(dev))
        m = cverts.shape[1]
        zeros = torch.zeros(b, m, 1, device=dev)
        cch = torch.cat([calb, zeros, attrs[..., 0:1], zeros, attrs[..., 1:2], attrs[..., 2:3]], dim=-1)
        verts = torch.cat([verts, cverts], dim=1)
        normals = torch.cat([normals, cnormals], dim=1)
        channels = torch.cat([channels, cch], dim=1)
        tri = torch.cat([tri, ctri + n])
    clip = model.camera.to_clip(verts, size)
    out = renderer.forward(clip, tri.to(torch.int32), channels, normals, resolution=size)
    cov = out.mask.float().clamp(0.0, 1.0)
    safe = cov.clamp_min(1e-4)
    img = out.image.float()
    unpre = torch.where(cov > 1e-4, img / safe, torch.zeros_like(img))
    return HeadRender(
        coverage=cov.cpu(),
        face=img[:, _C_FACE : _C_FACE + 1].clamp(0.0, 1.0).cpu(),
        skin=img[:, _C_SKIN : _C_SKIN + 1].clamp(0.0, 1.0).cpu(),
        hair=img[:, _C_HAIR : _C_HAIR + 1].clamp(0.0, 1.0).cpu(),
        albedo=unpre[:, _C_ALB].clamp(0.0, 1.0).cpu(),
        normals=F.normalize(out.normals.float(), dim=1, eps=1e-6).cpu(),
        depth=out.depth.float().cpu(),
        ambient_occlusion=torch.where(cov > 1e-4, unpre[:, _C_AO : _C_AO + 1], torch.ones_like(cov)).cpu(),
        specular=unpre[:, _C_SPEC : _C_SPEC + 1].clamp(0.0, 1.0).cpu(),
    )


def _max_blur(mask: Tensor, radius: int) -> Tensor:
    """Dilates a (1, S, S) mask by ``radius`` pixels and softens the edge."""
    if radius < 1:
        return mask
    k = 2 * radius + 1
    d = F.max_pool2d(mask[None], k, stride=1, padding=radius)
    return F.avg_pool2d(d, 3, stride=1, padding=1, count_include_pad=False)[0]


def hair_layers(
    head_hair: Tensor,
    face: Tensor,
    normals: Tensor,
    irradiance: Tensor,
    landmarks: Tensor,
    r: Tensor,
    texture: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hair of one sample: on the rendered scalp, a volume around it, long hair and a fringe.

    Args:
        head_hair: (1, S, S) scalp weight x coverage (from :func:`render_head`).
        face: (1, S, S) coverage of the face model's triangles.
        normals: (3, S, S) rendered normals (for the hair shading; zero where empty).
        irradiance: (3, S, S) the light at the pixel (from :func:`msma.data.synthetic.lighting.shade`).
        landmarks: (68, 2) projected landmarks (pixels).
        r: (10,) uniform draws.
        texture: (1, s, s) value noise in [0, 1] (strand texture).

    Returns:
        ``(front_rgb, front_alpha, back_rgb, back_alpha)``: the hair over the render (scalp and fringe; the
        fringe may cover face pixels) and the hair behind it (volume and long hair), each (3|1, S, S).
    """
    size = head_hair.shape[-1]
    zeros = torch.zeros(1, size, size)
    if float(r[0]) < 0.1 or not bool(torch.isfinite(landmarks).all()):  # bald / shaved
        return torch.zeros(3, size, size), zeros, torch.zeros(3, size, size), zeros
    idx = int(torch.searchsorted(HAIR_P.cumsum(0), r[1].clamp(0, 0.9999)))
    colour = HAIR_RGB[min(idx, len(HAIR_RGB) - 1)] * (0.75 + 0.5 * float(r[2]))
    tex = F.interpolate(texture[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    # Strands: stretch the texture along the image's vertical axis (upright heads dominate).
    tex = F.avg_pool2d(tex[None], (7, 1), stride=1, padding=(3, 0))[0]
    light = irradiance.mean(0, keepdim=True).clamp(0.2, 1.6)
    sheen = (normals[1:2].clamp_min(0.0) ** 4) * 0.25 * float(r[3])  # highlight on top of the head
    rgb = (colour[:, None, None] * (0.55 + 0.9 * tex) * light + sheen).clamp(0.0, 1.0)
    short = float(r[4]) < 0.3
    scalp = ((head_hair - (0.55 if short else 0.35)) / 0.3).clamp(0.0, 1.0)
    front = scalp * (1.0 - face)
    # Volume: the scalp silhouette grown outwards (behind the render).
    chin, nasion = landmarks[8], landmarks[27]
    face_h = float((nasion - chin).norm().clamp_min(4.0))
    grow = 0 if short else int(round(face_h * (0.04 + 0.18 * float(r[5]))))
    back = _max_blur((head_hair > 0.3).float(), grow)
    flat = torch.full((3, size, size), 1.0) * colour[:, None, None] * (0.5 + 0.8 * tex) * float(light.mean())
    if float(r[6]) < 0.35 and not short:  # long hair down both sides of the neck
        up = (nasion - chin) / face_h
        side = torch.stack([-up[1], up[0]])
        ys, xs = torch.meshgrid(
            torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
        )
        jaw_w = float((landmarks[16] - landmarks[0]).norm().clamp_min(4.0))
        dx, dy = xs - float(chin[0]), ys - float(chin[1])
        across = (dx * float(side[0]) + dy * float(side[1])).abs() / (0.5 * jaw_w)
        below = -(dx * float(up[0]) + dy * float(up[1])) / face_h  # > 0 under the chin
        length = 0.3 + 1.2 * float(r[7])
        band = torch.sigmoid((across - 0.75) * 10) * torch.sigmoid((1.45 - across) * 10)
        drop = band * torch.sigmoid((length - below) * 8) * torch.sigmoid((below + 1.2) * 8)
        back = torch.maximum(back, drop[None])
    fringe = zeros
    if float(r[8]) < 0.25 and not short:  # a fringe over the upper forehead (covers face pixels)
        brow_y = float(landmarks[17:27, 1].min())
        bottom = brow_y - face_h * (0.03 + 0.3 * float(r[9]))  # the fringe ends this far above the brows
        ys = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
        fringe = torch.sigmoid((bottom - ys) / 1.5)[None] * face.clamp(0.0, 1.0)
    front_alpha = torch.maximum(front, fringe).clamp(0.0, 1.0)
    return rgb, front_alpha, flat.clamp(0.0, 1.0), back.clamp(0.0, 1.0)
