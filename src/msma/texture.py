"""Textured export: a UV texture of the face sampled from the photo, written as OBJ + MTL + PNG.

The texture lives in the face model's UV space (ICT-FaceKit's ``[0, 1]`` tile: the face, ears and neck; the
mouth socket and eyeballs lie in other UDIM tiles and are left out of the textured mesh). Per texel:

1. the texel's triangle and barycentrics come from rasterising the mesh *in UV space* (the renderer's rasteriser
   with UVs as clip coordinates);
2. its photo position is the same barycentric mix of the vertices' projections into the photo, and its colour is
   sampled there (bilinear);
3. its visibility is the mix of per-vertex visibility: the vertex faces the camera (normal towards it) and is not
   hidden (its depth matches the depth buffer of a rendering at its pixel);
4. where it is not visible, the colour comes from the mirror texel (the symmetric vertex of the mean face, same
   barycentrics) where that one is visible, else from the fitted albedo times the mean visible skin colour ratio.

BFM has no UVs: :func:`bake_texture` raises for a model without them (per-vertex colours stay the default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from msma.utils.files import atomic_write_text

if TYPE_CHECKING:
    from msma.face_model.model import FaceModel
    from msma.face_model.params import FaceParams

#: A vertex counts as visible when its rendered depth is within this of the depth buffer (mm).
DEPTH_TOLERANCE_MM = 4.0
#: Normal z (towards the camera) below which a vertex fades to invisible, and the fade width.
NORMAL_Z_MIN = 0.05
NORMAL_Z_FADE = 0.25
#: Texels grown past the UV islands' borders.
SEAM_GROW_PX = 8


@dataclass(frozen=True)
class Texture:
    """A baked texture.

    Attributes:
        image: (T, T, 3) uint8 RGB, row 0 = v = 1 (OBJ/PNG convention).
        visibility: (T, T) float32 in [0, 1]: how much of each texel came from the photo directly.
        tri: (F, 3) int64 triangles of the textured part of the mesh (UVs inside the [0, 1] tile).
        uv: (N, 2) float32 texture coordinates per vertex.
    """

    image: np.ndarray
    visibility: np.ndarray
    tri: np.ndarray
    uv: np.ndarray


def symmetric_vertices(mean_shape: np.ndarray) -> np.ndarray:
    """For each vertex the index of its mirror image (x -> -x) in the mean face (nearest vertex), (N,) int64."""
    from scipy.spatial import cKDTree

    mirrored = mean_shape * np.array([-1.0, 1.0, 1.0])
    _, idx = cKDTree(mean_shape).query(mirrored)
    return np.asarray(idx, dtype=np.int64)


def vertex_visibility(
    vertices: Tensor, normals: Tensor, tri: Tensor, camera: object, image_size: int, rasterizer: object
) -> Tensor:
    """Per-vertex visibility in [0, 1] of one posed face.

    Args:
        vertices: (N, 3) posed vertices, model frame, mm.
        normals: (N, 3) posed unit normals.
        tri: (F, 3) triangles that occlude (the rendered ones).
        camera: the face model's :class:`~msma.face_model.camera.PerspectiveCamera`.
        image_size: size of the depth-buffer rendering, pixels.
        rasterizer: a :class:`~msma.render.base.Rasterizer`.
    """
    clip = camera.to_clip(vertices[None], image_size)  # type: ignore[attr-defined]
    tri32 = tri.to(torch.int32)
    rast = rasterizer.rasterize(clip, tri32, (image_size, image_size))  # type: ignore[attr-defined]
    depth = rasterizer.interpolate(clip[..., 3:4].contiguous(), rast, tri32)[0, ..., 0]  # type: ignore[attr-defined]
    covered = rast[0, ..., 3] > 0
    px = camera.project(vertices[None], image_size)[0]  # type: ignore[attr-defined]
    j = px[:, 0].round().long().clamp(0, image_size - 1)
    i = px[:, 1].round().long().clamp(0, image_size - 1)
    d_vert = clip[0, :, 3]
    not_hidden = covered[i, j] & ((d_vert - depth[i, j]) < DEPTH_TOLERANCE_MM)
    facing = ((normals[:, 2] - NORMAL_Z_MIN) / NORMAL_Z_FADE).clamp(0.0, 1.0)
    return facing * not_hidden.to(facing.dtype)


def bake_texture(
    photo: np.ndarray,
    vertices_px: np.ndarray,
    visibility: np.ndarray,
    uv: np.ndarray,
    mesh_tri: np.ndarray,
    symmetric: np.ndarray,
    albedo: np.ndarray,
    size: int = 512,
    rasterizer: object | None = None,
) -> Texture:
    """Samples the photo into the UV texture (module docstring).

    Args:
        photo: (H, W, 3) float RGB in [0, 1].
        vertices_px: (N, 2) vertex projections in photo pixels (x right, y down).
        visibility: (N,) per-vertex visibility in [0, 1].
        uv: (N, 2) texture coordinates (v up).
        mesh_tri: (F, 3) triangles; those with every UV inside [0, 1] are textured.
        symmetric: (N,) mirror vertex of each vertex.
        albedo: (N, 3) fitted albedo in [0, 1] (fill where neither side is visible).
        size: texture side T, pixels.
        rasterizer: a :class:`~msma.render.base.Rasterizer` (default: the torch backend).
    """
    import cv2

    if rasterizer is None:
        from msma.render.torch_raster import TorchRasterizer

        rasterizer = TorchRasterizer()
    uv = np.asarray(uv, dtype=np.float64)
    inside = ((uv[mesh_tri] >= 0.0) & (uv[mesh_tri] <= 1.0)).all(axis=(1, 2))
    tri = np.asarray(mesh_tri[inside], dtype=np.int64)
    if len(tri) == 0:
        raise ValueError("no triangle has its UVs inside the [0, 1] tile")
    # UV -> clip: x = 2u - 1; row 0 must be v = 1 (image convention), and clip row 0 is ndc_y = -1.
    clip = torch.zeros(1, len(uv), 4, dtype=torch.float32)
    clip[0, :, 0] = torch.as_tensor(2.0 * uv[:, 0] - 1.0)
    clip[0, :, 1] = torch.as_tensor(1.0 - 2.0 * uv[:, 1])
    clip[0, :, 3] = 1.0
    tri32 = torch.as_tensor(tri, dtype=torch.int32)
    with torch.no_grad():
        rast = rasterizer.rasterize(clip, tri32, (size, size))  # type: ignore[attr-defined]
        attrs = np.concatenate(
            [vertices_px, visibility[:, None], vertices_px[symmetric], visibility[symmetric][:, None], albedo], axis=1
        )
        feats = rasterizer.interpolate(  # type: ignore[attr-defined]
            torch.as_tensor(attrs, dtype=torch.float32)[None], rast, tri32
        )[0].numpy()
    covered = rast[0, ..., 3].numpy() > 0
    photo32 = np.ascontiguousarray(photo, dtype=np.float32)

    def sample(xy: np.ndarray) -> np.ndarray:
        return cv2.remap(
            photo32,
            xy[..., 0].astype(np.float32),
            xy[..., 1].astype(np.float32),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )

    h, w = photo.shape[:2]

    def in_photo(xy: np.ndarray) -> np.ndarray:
        return ((xy[..., 0] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= h - 1)).astype(
            np.float32
        )

    xy, vis = feats[..., 0:2], feats[..., 2] * in_photo(feats[..., 0:2])
    xy_s, vis_s = feats[..., 3:5], feats[..., 5] * in_photo(feats[..., 3:5])
    alb = np.clip(feats[..., 6:9], 0.0, 1.0)
    col, col_s = sample(xy), sample(xy_s)
    vis = np.where(covered, vis, 0.0).astype(np.float32)
    vis_s = np.where(covered, vis_s, 0.0).astype(np.float32)
    # fill: albedo scaled to the photo's visible skin colour (light and camera response)
    seen = vis > 0.5
    ratio = (col[seen].mean(0) / np.maximum(alb[seen].mean(0), 1e-3)) if seen.any() else np.ones(3)
    fill = np.clip(alb * ratio, 0.0, 1.0)
    mirror = (1.0 - vis) * vis_s
    rest = (1.0 - vis) * (1.0 - vis_s)
    tex = vis[..., None] * col + mirror[..., None] * col_s + rest[..., None] * fill
    tex = np.where(covered[..., None], tex, 0.0)
    # grow the covered area by a few texels (mipmapped / bilinear lookups at UV borders), the rest a flat colour
    tex = _grow(tex.astype(np.float32), covered, SEAM_GROW_PX)
    tex8 = (np.clip(tex, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Texture(image=tex8, visibility=vis, tri=tri, uv=uv.astype(np.float32))


def _grow(tex: np.ndarray, covered: np.ndarray, steps: int) -> np.ndarray:
    """Extends (T, T, 3) ``tex`` from its ``covered`` texels outwards by ``steps`` texels (3x3 mean of covered
    neighbours per step); texels still empty get the mean covered colour."""
    import cv2

    out = np.where(covered[..., None], tex, 0.0).astype(np.float32)
    mask = covered.astype(np.float32)
    for _ in range(steps):
        s = cv2.blur(out * mask[..., None], (3, 3))
        m = cv2.blur(mask, (3, 3))
        new = (mask == 0) & (m > 0)
        out[new] = s[new] / m[new][:, None]
        mask[new] = 1.0
    if covered.any():
        out[mask == 0] = tex[covered].mean(0)
    return out


def write_textured_obj(
    path: str | os.PathLike[str], vertices: np.ndarray, texture: Texture, material: str = "face"
) -> list[Path]:
    """Writes ``<stem>.obj`` (v, vt, f v/vt), ``<stem>.mtl`` (``map_Kd``) and ``<stem>_texture.png``.

    Args:
        path: the OBJ path.
        vertices: (N, 3) vertices (any frame; the canonical shape in mm for ``msma reconstruct``).
        texture: from :func:`bake_texture`.
        material: material name.

    Returns:
        The three paths written.
    """
    from msma.viz import save_png  # PIL, only when writing

    obj = Path(path)
    mtl = obj.with_suffix(".mtl")
    png = obj.with_name(f"{obj.stem}_texture.png")
    save_png(texture.image, png)
    atomic_write_text(mtl, f"newmtl {material}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {png.name}\n")
    v = np.asarray(vertices, dtype=np.float64)
    lines = [f"mtllib {mtl.name}", f"usemtl {material}"]
    lines += [f"v {x:.5f} {y:.5f} {z:.5f}" for x, y, z in v]
    lines += [f"vt {u:.6f} {w:.6f}" for u, w in texture.uv]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in (texture.tri + 1)]
    atomic_write_text(obj, "\n".join(lines) + "\n")
    return [obj, mtl, png]


def bake_face_texture(
    face_model: FaceModel,
    params: FaceParams,
    photo: np.ndarray,
    crop_to_photo: np.ndarray,
    crop_size: int,
    size: int = 512,
    visibility_size: int = 512,
) -> Texture:
    """The texture of one reconstructed face.

    Args:
        face_model: the :class:`~msma.face_model.model.FaceModel` (with UVs).
        params: its :class:`~msma.face_model.params.FaceParams` (one row) in the crop frame.
        photo: (H, W, 3) float RGB in [0, 1], the image ``crop_to_photo`` maps into.
        crop_to_photo: (3, 3) affine crop pixels -> photo pixels.
        crop_size: side of the crop frame the parameters refer to, pixels.
        size: texture side, pixels.
        visibility_size: side of the depth-buffer rendering used for visibility.

    Raises:
        ValueError: the model has no UVs (BFM).
    """
    from msma.render.torch_raster import TorchRasterizer

    uv = getattr(face_model, "uv", None)
    if uv is None:
        raise ValueError(f"face model {getattr(face_model, 'name', '?')!r} has no UVs: no texture export")
    ras = TorchRasterizer()
    with torch.no_grad():
        p = params.to(face_model.mean_shape.device)  # type: ignore[attr-defined]
        face = face_model(p, image_size=visibility_size)
        verts, normals = face.vertices[0].cpu(), face.normals[0].cpu()
        vis = vertex_visibility(verts, normals, face_model.tri.cpu(), face_model.camera, visibility_size, ras)
        px = face_model.camera.project(verts[None], visibility_size)[0].double().numpy()  # type: ignore[operator]
    k = crop_size / visibility_size  # crop px per visibility-render px (pixel-index convention)
    px_crop = (px + 0.5) * k - 0.5
    px_photo = px_crop @ crop_to_photo[:2, :2].T + crop_to_photo[:2, 2]
    sym = symmetric_vertices(face_model.mean_shape.cpu().double().numpy())  # type: ignore[attr-defined]
    albedo = face.albedo[0].clamp(0, 1).cpu().numpy()
    return bake_texture(
        photo, px_photo, vis.numpy(), uv.cpu().numpy(), face_model.mesh_tri.cpu().numpy(), sym, albedo, size, ras
    )
