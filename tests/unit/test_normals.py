"""Vertex normals: the sparse-product form (MeshNormals, what FaceModel uses) against the gather / index_add
definition (mesh_vertex_normals), values and gradients; copies; bad input."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import trimesh

from msma.face_model import FaceModel
from msma.face_model.normals import MeshNormals, mesh_vertex_normals


def _sphere(subdivisions: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ico = trimesh.creation.icosphere(subdivisions=subdivisions, radius=50.0)
    return torch.as_tensor(np.asarray(ico.vertices), dtype=torch.float64), torch.as_tensor(np.asarray(ico.faces))


def test_sphere_normals_are_radial_and_match_the_definition() -> None:
    v, tri = _sphere(2)
    # One extra vertex in no triangle: a zero normal in both forms.
    verts = torch.cat([v, torch.tensor([[0.0, 0.0, 0.0]], dtype=v.dtype)])[None]
    n = MeshNormals(tri, verts.shape[1])(verts)[0]
    cos = (n[:-1] * v / v.norm(dim=-1, keepdim=True)).sum(dim=-1)
    assert float(cos.min()) > 0.9995  # within 1.8 degrees of radial (unweighted face normals on a coarse sphere)
    assert torch.equal(n[-1], torch.zeros(3, dtype=v.dtype))
    torch.testing.assert_close(n, mesh_vertex_normals(verts, tri)[0], atol=1e-12, rtol=0)


def test_ict_normals_and_gradients_match_the_definition(ict_model: FaceModel) -> None:
    g = torch.Generator().manual_seed(3)
    layout = ict_model.layout
    shape = ict_model.shape(torch.randn(3, layout.n_id, generator=g) * 0.7, torch.rand(3, layout.n_exp, generator=g))
    weights = torch.randn(shape.shape, generator=g)

    def normals_and_grad(fn):  # type: ignore[no-untyped-def]
        x = shape.detach().clone().requires_grad_()
        n = fn(x)
        (grad,) = torch.autograd.grad((n * weights).sum(), x)
        return n.detach(), grad

    fast, fast_grad = normals_and_grad(ict_model.vertex_normals)
    ref, ref_grad = normals_and_grad(lambda x: mesh_vertex_normals(x, ict_model.mesh_tri))
    used = torch.zeros(ict_model.n_vertices, dtype=torch.bool)
    used[ict_model.mesh_tri.reshape(-1)] = True
    assert bool(used.all())  # every ICT vertex is in a triangle: all normals are unit
    torch.testing.assert_close(fast.norm(dim=-1), torch.ones(3, ict_model.n_vertices), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast, ref, atol=2e-6, rtol=0)
    scale = float(ref_grad.abs().max())
    assert scale > 0
    torch.testing.assert_close(fast_grad, ref_grad, atol=1e-5 * scale, rtol=0)


def test_half_precision_falls_back_to_the_definition() -> None:
    v, tri = _sphere(1)
    x = v.to(torch.bfloat16)[None]
    out = MeshNormals(tri, v.shape[0])(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, mesh_vertex_normals(x, tri))


def test_gradcheck_in_double() -> None:
    v, tri = _sphere(0)
    x = (v + 3.0 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0), dtype=v.dtype))[None]
    op = MeshNormals(tri, v.shape[0])
    assert torch.autograd.gradcheck(op, (x.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_copies_rebuild_and_agree(ict_model: FaceModel) -> None:
    x = ict_model.mean_shape[None]
    ref = ict_model.vertex_normals(x)
    for clone in (copy.deepcopy(ict_model), pickle.loads(pickle.dumps(ict_model))):
        assert torch.equal(clone.vertex_normals(x), ref)
    op = MeshNormals(ict_model.mesh_tri, ict_model.n_vertices)
    assert torch.equal(copy.deepcopy(op)(x), op(x))


def test_bad_input_is_refused() -> None:
    v, tri = _sphere(0)
    with pytest.raises(ValueError, match=r"tri indices must be in \[0, 5\)"):
        MeshNormals(tri, 5)
    with pytest.raises(ValueError, match=r"tri must be \(F, 3\)"):
        MeshNormals(tri[:, :2], v.shape[0])
    op = MeshNormals(tri, v.shape[0])
    with pytest.raises(ValueError, match=r"expected vertices \(B, 12, 3\)"):
        op(v)  # no batch dimension
