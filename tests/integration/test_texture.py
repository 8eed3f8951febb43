"""Textured export: UV texture sampled from the photo, mirror fill, OBJ + MTL + PNG from ``msma reconstruct``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msma.texture import bake_texture, symmetric_vertices


def test_symmetric_vertices_mirror_the_mean_face(ict_model) -> None:  # type: ignore[no-untyped-def]
    mean = ict_model.mean_shape.numpy().astype(np.float64)
    sym = symmetric_vertices(mean)
    assert (sym[sym] == np.arange(len(sym))).mean() > 0.9
    err = np.linalg.norm(mean[sym] * [-1, 1, 1] - mean, axis=1)
    assert np.median(err) < 0.5  # mm


def test_bake_texture_samples_the_photo_and_fills_by_symmetry() -> None:
    # a square of two triangles: left half (x < 0) visible, right half hidden; the photo is red left, blue right
    verts_uv = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    tri = np.array([[0, 1, 2], [0, 2, 3], [1, 4, 5], [1, 5, 2]])
    px = verts_uv * [63, 63]
    photo = np.zeros((64, 64, 3), np.float32)
    photo[:, :32, 0] = 1.0
    photo[:, 32:, 2] = 1.0
    vis = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    sym = np.array([4, 1, 2, 5, 0, 3])  # mirror across u = 0.5
    albedo = np.full((6, 3), 0.5)
    tex = bake_texture(photo, px, vis, verts_uv, tri, sym, albedo, size=64)
    img = tex.image.astype(float) / 255.0
    assert img[32, 8, 0] > 0.9 and img[32, 8, 2] < 0.1  # visible part: the photo (red)
    assert img[32, 62, 0] > 0.9 and img[32, 62, 2] < 0.1  # hidden part: the mirror texel (red), not blue
    assert img[32, 48, 0] > 0.4 and img[32, 48, 2] > 0.4  # in between: blended by the visibility
    assert tex.visibility[32, 8] > 0.99 and tex.visibility[32, 62] < 0.05


def test_reconstruct_texture_cli(tmp_path: Path, testdata: Path) -> None:
    from msma.cli.reconstruct import cli_main

    src = testdata / "aflw2000_3d" / "image00251.jpg"  # -55 degrees: half the face filled by symmetry
    code = cli_main([str(src), "--fit", "--texture", "--out", str(tmp_path), "--renderer", "torch"])
    assert code == 0
    obj = (tmp_path / "image00251.obj").read_text().splitlines()
    assert obj[0] == "mtllib image00251.mtl"
    n_v = sum(line.startswith("v ") for line in obj)
    n_vt = sum(line.startswith("vt ") for line in obj)
    faces = [line for line in obj if line.startswith("f ")]
    assert n_v == n_vt > 5000 and len(faces) > 5000 and "/" in faces[0]
    assert "map_Kd image00251_texture.png" in (tmp_path / "image00251.mtl").read_text()
    png = np.asarray(Image.open(tmp_path / "image00251_texture.png"))
    assert png.shape == (512, 512, 3) and png.std() > 10


def test_texture_needs_uvs(ict_model) -> None:  # type: ignore[no-untyped-def]
    from msma.texture import bake_face_texture

    class NoUV:
        uv = None
        name = "bfm"

    with pytest.raises(ValueError, match="no UVs"):
        bake_face_texture(NoUV(), ict_model.layout.zeros(1), np.zeros((8, 8, 3)), np.eye(3), 224)  # type: ignore[arg-type]
