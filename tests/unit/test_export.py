"""OBJ / PLY export through trimesh: files load back with the same geometry, colours, UVs and texture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from msma.export import export_obj, export_ply
from msma.face_model import FaceModel

V = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 0.5]], dtype=np.float64)
F = np.array([[0, 1, 2], [1, 3, 2]])
C = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]])


def test_obj_with_vertex_colors(tmp_path: Path) -> None:
    path = export_obj(tmp_path / "a.obj", torch.as_tensor(V), torch.as_tensor(F), vertex_colors=C)
    m = trimesh.load(path, process=False)
    np.testing.assert_allclose(m.vertices, V, atol=1e-6)
    np.testing.assert_array_equal(m.faces, F)
    np.testing.assert_array_equal(m.visual.vertex_colors[:, :3], np.rint(C * 255).astype(np.uint8))


def test_obj_with_uv_and_texture(tmp_path: Path) -> None:
    uv = V[:, :2] / 10.0
    tex = np.zeros((8, 16, 3))
    tex[:, :8, 0] = 1.0
    path = export_obj(tmp_path / "t.obj", V, F, uv=uv, texture=tex)
    assert (tmp_path / "t.mtl").is_file() and (tmp_path / "t.png").is_file()
    m = trimesh.load(path, process=False)
    assert m.visual.kind == "texture"
    np.testing.assert_allclose(m.visual.uv, uv, atol=1e-6)
    img = np.asarray(m.visual.material.image.convert("RGB"))
    assert img.shape == (8, 16, 3) and img[0, 0, 0] == 255 and img[0, 15, 0] == 0
    with pytest.raises(ValueError, match="uv"):
        export_obj(tmp_path / "x.obj", V, F, texture=tex)


def test_obj_with_uv_only(tmp_path: Path) -> None:
    uv = V[:, :2] / 20.0
    path = export_obj(tmp_path / "u.obj", V, F, uv=uv)
    assert "vt " in path.read_text()
    m = trimesh.load(path, process=False)
    np.testing.assert_allclose(m.visual.uv, uv, atol=1e-6)


def test_ply_with_colors(tmp_path: Path) -> None:
    path = export_ply(tmp_path / "a.ply", V[None], F, vertex_colors=C)  # a batch of one is accepted
    m = trimesh.load(path, process=False)
    np.testing.assert_allclose(m.vertices, V, atol=1e-6)
    np.testing.assert_array_equal(m.faces, F)
    np.testing.assert_array_equal(m.visual.vertex_colors[:, :3], np.rint(C * 255).astype(np.uint8))


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vertices"):
        export_ply(tmp_path / "b.ply", V[:, :2], F)
    with pytest.raises(ValueError, match="tri indices"):
        export_obj(tmp_path / "b.obj", V, F + 10)
    with pytest.raises(ValueError, match="vertex_colors"):
        export_obj(tmp_path / "b.obj", V, F, vertex_colors=C[:2])
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        export_ply(tmp_path / "b.ply", V, F, vertex_colors=C * 255)


def test_export_ict_face(tmp_path: Path, ict_model: FaceModel) -> None:
    out = ict_model(ict_model.layout.zeros(1))
    path = export_obj(tmp_path / "face.obj", out.vertices[0], ict_model.tri, vertex_colors=out.color[0].clamp(0, 1))
    # Every model vertex is written (indices stay the model's); trimesh keeps unreferenced ones with maintain_order.
    assert path.read_text().count("\nv ") == ict_model.n_vertices
    m = trimesh.load(path, process=False, maintain_order=True)
    assert len(m.vertices) == ict_model.n_vertices and len(m.faces) == len(ict_model.tri)
    # Outward orientation survives the round trip: the nose-tip normal of the reloaded mesh faces +z.
    nose = int(ict_model.landmark_idx[30])
    assert m.vertex_normals[nose, 2] > 0.8
