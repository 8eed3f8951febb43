"""Mesh export through trimesh: OBJ (optionally with vertex colours, or UVs + a texture image) and PLY.

Vertices are written as given (msma's model frame: millimetres, x right, y up, z towards the camera, which
Blender / MeshLab display upright with the face towards +z). Triangles must be counter-clockwise seen from
outside (msma's convention), so viewers compute outward normals. Every vertex is written, also those no
triangle uses (e.g. outside the rendered region), so vertex ``i`` of the file is vertex ``i`` of the model;
``trimesh.load(..., process=False, maintain_order=True)`` reads them back unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike, name: str, dtype: type, cols: int | None = None) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 3 and arr.shape[0] == 1 and cols is not None:
        arr = arr[0]  # a batch of one
    if cols is not None and (arr.ndim != 2 or arr.shape[1] != cols):
        raise ValueError(f"{name} must be (N, {cols}), got {arr.shape}")
    return arr.astype(dtype)


def _colors_u8(vertex_colors: ArrayLike, n: int) -> np.ndarray:
    c = _np(vertex_colors, "vertex_colors", np.float64, 3)
    if c.shape[0] != n:
        raise ValueError(f"vertex_colors has {c.shape[0]} rows for {n} vertices")
    if c.max(initial=0.0) > 1.0 + 1e-6 and c.max() <= 255.0:
        raise ValueError("vertex_colors must be float RGB in [0, 1] (got values above 1)")
    rgb = np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)
    return np.concatenate([rgb, np.full((n, 1), 255, np.uint8)], axis=1)


def _mesh(vertices: ArrayLike, tri: ArrayLike) -> trimesh.Trimesh:
    v = _np(vertices, "vertices", np.float64, 3)
    f = _np(tri, "tri", np.int64, 3)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"tri indices must be in [0, {len(v)}), got [{f.min()}, {f.max()}]")
    return trimesh.Trimesh(vertices=v, faces=f, process=False, validate=False)


def export_obj(
    path: str | os.PathLike[str],
    vertices: ArrayLike,
    tri: ArrayLike,
    vertex_colors: ArrayLike | None = None,
    uv: ArrayLike | None = None,
    texture: ArrayLike | Image.Image | None = None,
) -> Path:
    """Writes a Wavefront OBJ.

    Args:
        path: output ``.obj`` path (a ``.mtl`` and the texture PNG are written next to it when textured).
        vertices: (N, 3) or (1, N, 3) positions (mm, model frame).
        tri: (F, 3) 0-based triangle indices (counter-clockwise seen from outside).
        vertex_colors: optional (N, 3) float RGB in [0, 1], written as ``v x y z r g b``.
        uv: optional (N, 2) per-vertex texture coordinates in [0, 1] (v up, OBJ convention).
        texture: optional (H, W, 3) RGB image (float in [0, 1] or uint8) or PIL image; requires ``uv``.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh = _mesh(vertices, tri)
    if texture is not None and uv is None:
        raise ValueError("a texture needs per-vertex uv coordinates")
    if uv is not None:
        uv_np = _np(uv, "uv", np.float64, 2)
        if uv_np.shape[0] != len(mesh.vertices):
            raise ValueError(f"uv has {uv_np.shape[0]} rows for {len(mesh.vertices)} vertices")
        image = None
        if texture is not None:
            if isinstance(texture, Image.Image):
                image = texture.convert("RGB")
            else:
                t = _np(texture, "texture", np.float64)
                if t.ndim != 3 or t.shape[2] != 3:
                    raise ValueError(f"texture must be (H, W, 3), got {t.shape}")
                t8 = (
                    t.astype(np.uint8) if t.max(initial=0.0) > 1.0 else np.rint(np.clip(t, 0, 1) * 255).astype(np.uint8)
                )
                image = Image.fromarray(t8, "RGB")
        material = trimesh.visual.material.SimpleMaterial(
            image=image,
            name=path.stem,
            diffuse=(255, 255, 255, 255),
            ambient=(255, 255, 255, 255),
            specular=(0, 0, 0, 255),
        )
        mesh.visual = trimesh.visual.TextureVisuals(uv=uv_np, image=image, material=material)
        mesh.export(path, file_type="obj", include_texture=True, mtl_name=f"{path.stem}.mtl")
        return path
    if vertex_colors is not None:
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_colors_u8(vertex_colors, len(mesh.vertices)))
    mesh.export(path, file_type="obj", include_color=vertex_colors is not None, include_texture=False)
    return path


def export_ply(
    path: str | os.PathLike[str], vertices: ArrayLike, tri: ArrayLike, vertex_colors: ArrayLike | None = None
) -> Path:
    """Writes a binary PLY with optional per-vertex colours ((N, 3) float RGB in [0, 1] -> uchar RGBA)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh = _mesh(vertices, tri)
    if vertex_colors is not None:
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_colors_u8(vertex_colors, len(mesh.vertices)))
    mesh.export(path, file_type="ply")
    return path
