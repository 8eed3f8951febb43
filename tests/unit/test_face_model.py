"""FaceModel contract: mean face at zero, linearity, normals, layout, landmarks, gradients, pose, shading, I/O."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from msma.face_model import CoeffLayout, FaceModel, FaceModelArrays, FaceParams, PerspectiveCamera
from msma.face_model.model import load_arrays, save_arrays
from msma.face_model.rotation import euler_to_matrix, matrix_to_euler, rotation_x, rotation_y, rotation_z
from msma.face_model.shading import SH_A, SH_C, sh_basis, sh_coefficients, sh_shade


def sphere_arrays(n_id: int = 3, n_exp: int = 2, n_tex: int = 4, seed: int = 0) -> FaceModelArrays:
    """A 100 mm-radius icosphere 'face' with random bases (fast, exact geometry for normal tests)."""
    rng = np.random.default_rng(seed)
    ico = trimesh.creation.icosphere(subdivisions=2, radius=100.0)
    v = np.asarray(ico.vertices, dtype=np.float32)
    f = np.asarray(ico.faces, dtype=np.int64)
    n = len(v)
    return FaceModelArrays(
        name="sphere",
        mean_shape=v,
        id_basis=rng.normal(size=(n, 3, n_id)).astype(np.float32),
        exp_basis=rng.normal(size=(n, 3, n_exp)).astype(np.float32),
        albedo_mean=np.full((n, 3), 0.5, np.float32),
        albedo_basis=(0.05 * rng.normal(size=(n, 3, n_tex))).astype(np.float32),
        tri=f[: len(f) // 2],
        mesh_tri=f,
        landmark_idx=np.arange(68, dtype=np.int64),
        skin_mask=np.ones(n, np.float32),
        id_std=np.ones(n_id, np.float32),
        tex_std=np.ones(n_tex, np.float32),
        exp_kind="pca",
        exp_names=tuple(f"e{k}" for k in range(n_exp)),
        tex_names=tuple(f"t{k}" for k in range(n_tex)),
        uv=rng.uniform(size=(n, 2)).astype(np.float32),
    )


def random_params(layout: CoeffLayout, batch: int, seed: int = 0, pose: bool = True) -> FaceParams:
    g = torch.Generator().manual_seed(seed)
    p = layout.split(0.5 * torch.randn(batch, layout.total, generator=g))
    if not pose:
        p = p.replace(angles=torch.zeros(batch, 3), trans=torch.zeros(batch, 3))
    return p


# ---------------------------------------------------------------------------------------------- ICT model
def test_ict_layout_and_buffers(ict_model: FaceModel) -> None:
    m = ict_model
    assert m.name == "ict"
    assert (m.layout.n_id, m.layout.n_exp, m.layout.n_tex) == (100, 53, 20)
    assert m.layout.total == 100 + 53 + 20 + 3 + 27 + 3
    n = m.n_vertices
    assert m.mean_shape.shape == (n, 3) and m.mean_shape.dtype == torch.float32
    assert m.id_basis.shape == (n, 3, 100) and m.exp_basis.shape == (n, 3, 53)
    assert m.albedo_mean.shape == (n, 3) and m.albedo_basis.shape == (n, 3, 20)
    assert m.tri.dtype == torch.int64 and m.tri.shape[1] == 3 and int(m.tri.max()) < n
    assert m.tri_int32.dtype == torch.int32 and torch.equal(m.tri_int32.long(), m.tri)
    assert m.landmark_idx.shape == (68,) and m.landmark_idx.dtype == torch.int64
    assert m.skin_mask.shape == (n,) and float(m.skin_mask.min()) >= 0.0 and float(m.skin_mask.max()) <= 1.0
    assert m.uv is not None and m.uv.shape == (n, 2)
    assert m.id_std.shape == (100,) and m.tex_std.shape == (20,)
    assert len(m.exp_names) == 53 and "jawOpen" in m.exp_names and m.exp_kind == "blendshape"
    assert isinstance(m.camera, PerspectiveCamera)


def test_zero_params_give_mean_face(ict_model: FaceModel) -> None:
    m = ict_model
    out = m(m.layout.zeros(2), image_size=224)
    torch.testing.assert_close(out.vertices_canonical[0], m.mean_shape)
    torch.testing.assert_close(out.vertices[1], m.mean_shape)
    torch.testing.assert_close(out.albedo[0], m.albedo_mean)
    # Deep3D's ambient light: colour = 0.8 * a0 * c0 * albedo (~0.709 albedo).
    torch.testing.assert_close(out.color[0], 0.8 * SH_A[0] * SH_C[0] * m.albedo_mean.clamp_min(0))
    assert abs(0.8 * SH_A[0] * SH_C[0] - 0.4 * math.sqrt(math.pi)) < 1e-12
    # Centred: the mean face's narrow-face centroid is at the origin; the nose tip projects near the centre.
    nose = out.landmarks_2d[0, 30]
    assert abs(float(nose[0]) - 111.5) < 0.5 and abs(float(nose[1]) - 111.5) < 10
    torch.testing.assert_close(out.landmarks_3d[0], m.mean_shape[m.landmark_idx])
    torch.testing.assert_close(out.landmarks_2d, m.camera.project(out.landmarks_3d, 224))
    torch.testing.assert_close(out.clip, m.camera.to_clip(out.vertices, 224))
    assert out.image_size == 224


def test_shape_and_albedo_are_linear(ict_model: FaceModel) -> None:
    m = ict_model
    g = torch.Generator().manual_seed(1)
    ida, idb = torch.randn(2, 100, generator=g), torch.randn(2, 100, generator=g)
    exa, exb = torch.rand(2, 53, generator=g), torch.rand(2, 53, generator=g)
    a, b = 0.7, -1.3
    zero_id, zero_exp = torch.zeros(2, 100), torch.zeros(2, 53)

    def off(i: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return m.shape(i, e) - m.mean_shape

    torch.testing.assert_close(
        off(a * ida + b * idb, zero_exp), a * off(ida, zero_exp) + b * off(idb, zero_exp), atol=1e-3, rtol=1e-4
    )
    torch.testing.assert_close(
        off(zero_id, a * exa + b * exb), a * off(zero_id, exa) + b * off(zero_id, exb), atol=1e-3, rtol=1e-4
    )
    torch.testing.assert_close(off(ida, exa), off(ida, zero_exp) + off(zero_id, exa), atol=1e-3, rtol=1e-4)
    ta, tb = torch.randn(2, 20, generator=g), torch.randn(2, 20, generator=g)
    alb = lambda t: m.albedo(t) - m.albedo_mean  # noqa: E731
    torch.testing.assert_close(alb(a * ta + b * tb), a * alb(ta) + b * alb(tb), atol=1e-5, rtol=1e-4)
    # A single unit identity coefficient adds exactly that basis column (mm).
    one = torch.zeros(1, 100)
    one[0, 3] = 1.0
    torch.testing.assert_close(off(one, torch.zeros(1, 53))[0], m.id_basis[:, :, 3])


def test_normals_unit_and_outward_ict(ict_model: FaceModel) -> None:
    m = ict_model
    out = m(random_params(m.layout, 2, pose=False).replace(exp=torch.zeros(2, 53)))
    used = torch.zeros(m.n_vertices, dtype=torch.bool)
    used[m.mesh_tri.reshape(-1)] = True
    norms = out.normals[:, used].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
    # Outward: the nose tip and forehead normals look at the camera; rendered face normals mostly +z.
    assert float(out.normals[0, m.landmark_idx[30], 2]) > 0.9
    face = m.tri.reshape(-1).unique()
    face_z = out.normals[:, face[face < 6706], 2]  # the narrow face area (the ICT skin surface)
    assert float((face_z > 0).float().mean()) > 0.8


def test_normals_unit_and_outward_sphere() -> None:
    m = FaceModel(sphere_arrays())
    n = m.vertex_normals(m.mean_shape[None])[0]
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(m.n_vertices))
    radial = torch.nn.functional.normalize(m.mean_shape, dim=-1)
    assert float((n * radial).sum(-1).min()) > 0.99
    # Posed normals are the rotated canonical normals.
    p = m.layout.zeros(1).replace(angles=torch.tensor([[0.3, -0.4, 0.2]]))
    out = m(p)
    rot = euler_to_matrix(p.angles)[0]
    torch.testing.assert_close(out.normals[0], n @ rot.T, atol=1e-5, rtol=1e-5)


def test_layout_round_trip() -> None:
    for layout in (CoeffLayout(100, 53, 20), CoeffLayout(80, 64, 80)):
        flat = torch.randn(3, layout.total)
        params = layout.split(flat)
        assert params.id.shape == (3, layout.n_id) and params.sh.shape == (3, 27)
        torch.testing.assert_close(layout.join(params), flat)
    assert CoeffLayout(80, 64, 80).total == 257


def test_params_index_selects_batch_items_and_refuses_group_names() -> None:
    layout = CoeffLayout(10, 6, 4)
    flat = torch.randn(3, layout.total)
    params = layout.split(flat)
    one = params[1]
    assert one.exp.shape == (1, 6)
    torch.testing.assert_close(layout.join(one), flat[1:2])
    torch.testing.assert_close(layout.join(params[torch.tensor([2, 0])]), flat[[2, 0]])
    with pytest.raises(TypeError, match=r"params\.exp"):
        params["exp"]  # type: ignore[index]


def test_ict_landmarks_plausible(ict_model: FaceModel) -> None:
    m = ict_model
    lm = m(m.layout.zeros(1), image_size=224).landmarks_2d[0]
    assert bool(((lm > 0) & (lm < 224)).all())
    y = lm[:, 1]
    brows, eyes, nose_tip, mouth, chin = y[17:27].mean(), y[36:48].mean(), y[30], y[48:68].mean(), y[8]
    assert brows < eyes < nose_tip < mouth < chin  # y grows downwards
    x = lm[:, 0]
    # iBUG order: point 0 / the right eye (36-41) / mouth corner 48 are the subject's right = image left.
    assert x[0] < x[8] < x[16]
    assert x[36:42].mean() < x[27:36].mean() < x[42:48].mean()
    assert x[48] < x[51] < x[54]
    assert bool((x[:8] < x[8]).all()) and bool((x[9:17] > x[8]).all())
    # Mirror symmetry about the image centre column.
    assert abs(float(x[36] + x[45]) - 2 * 111.5) < 1.0
    # Real size at 1 m: outer eye corners about 90 mm apart -> about 90 px at f=1015.
    assert 70 < float(x[45] - x[36]) < 110


def test_gradients_reach_every_group(ict_model: FaceModel) -> None:
    m = ict_model
    flat = (0.1 * torch.randn(2, m.layout.total)).requires_grad_(True)
    p = m.layout.split(flat)
    out = m(p)
    loss = (
        out.color.square().mean()
        + out.landmarks_2d.square().mean() * 1e-3
        + out.vertices.square().mean() * 1e-4
        + out.clip.square().mean() * 1e-6
    )
    loss.backward()
    assert flat.grad is not None
    grads = m.layout.split(flat.grad)
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        # every coefficient of every group gets a gradient (albedo and light through the colour)
        assert bool((g.abs().sum(0) > 0).all()), f"no gradient for some {name} coefficients"


def test_pose_matches_deep3d_convention(ict_model: FaceModel) -> None:
    m = ict_model
    base = m(m.layout.zeros(1))
    nose0 = base.landmarks_3d[0, 30]
    yaw = m(m.layout.zeros(1).replace(angles=torch.tensor([[0.0, 0.3, 0.0]])))
    assert float(yaw.landmarks_3d[0, 30, 0]) > float(nose0[0]) + 5  # yaw > 0: nose to the viewer's right
    pitch = m(m.layout.zeros(1).replace(angles=torch.tensor([[0.3, 0.0, 0.0]])))
    assert float(pitch.landmarks_3d[0, 30, 1]) < float(nose0[1]) - 5  # Deep3D's Rx: pitch > 0 turns the nose down
    trans = torch.tensor([[10.0, -5.0, 20.0]])
    moved = m(m.layout.zeros(1).replace(trans=trans))
    torch.testing.assert_close(moved.vertices[0], base.vertices[0] + trans[0])
    ang = torch.tensor([[0.2, -0.5, 0.1]])
    posed = m(m.layout.zeros(1).replace(angles=ang, trans=trans))
    rot = euler_to_matrix(ang)[0]
    torch.testing.assert_close(posed.vertices[0], m.mean_shape @ rot.T + trans[0], atol=1e-4, rtol=1e-5)


def test_rotation_matrices_are_deep3d() -> None:
    a = torch.tensor([[0.3, -0.7, 1.1], [0.0, 0.0, 0.0]])
    x, y, z = 0.3, -0.7, 1.1
    rx = torch.tensor([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    ry = torch.tensor([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = torch.tensor([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    r = euler_to_matrix(a)
    torch.testing.assert_close(r[0], rz @ ry @ rx)
    torch.testing.assert_close(r[1], torch.eye(3))
    torch.testing.assert_close(rotation_x(a[:1, 0])[0], rx)
    torch.testing.assert_close(rotation_y(a[:1, 1])[0], ry)
    torch.testing.assert_close(rotation_z(a[:1, 2])[0], rz)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(matrix_to_euler(r), a, atol=1e-5, rtol=0)
    # Pitch > 0 about +x moves a point on +z (the nose) towards +y (up).
    nose = torch.tensor([[[0.0, 0.0, 100.0]]])
    up = nose @ euler_to_matrix(torch.tensor([[0.2, 0.0, 0.0]])).transpose(1, 2)
    assert float(up[0, 0, 1]) < 0  # Deep3D's Rx: y' = cos*y - sin*z -> nose goes DOWN for pitch > 0
    with pytest.raises(ValueError):
        euler_to_matrix(torch.zeros(2, 2))


def test_sh_shading_constants() -> None:
    # Constants of Deep3DFaceRecon_pytorch models/bfm.py SH.
    assert SH_A == pytest.approx((math.pi, 2 * math.pi / math.sqrt(3), 2 * math.pi / math.sqrt(8)))
    assert SH_C == pytest.approx(
        (1 / math.sqrt(4 * math.pi), math.sqrt(3) / math.sqrt(4 * math.pi), 3 * math.sqrt(5) / math.sqrt(12 * math.pi))
    )
    n = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    y = sh_basis(n)
    a1c1 = SH_A[1] * SH_C[1]
    torch.testing.assert_close(y[0, 0, :4], torch.tensor([SH_A[0] * SH_C[0], 0.0, a1c1, 0.0]))
    torch.testing.assert_close(y[0, 1, 3], torch.tensor(-a1c1))
    torch.testing.assert_close(y[0, 2, 1], torch.tensor(-a1c1))
    gamma = sh_coefficients(torch.zeros(1, 27))
    assert gamma.shape == (1, 3, 9) and float(gamma[0, :, 0].min()) == pytest.approx(0.8)
    # Channel-major layout: sh[9*c + k] is band k of colour c.
    sh = torch.zeros(1, 27)
    sh[0, 9 * 1 + 2] = 1.0  # green, z-facing band
    albedo = torch.ones(1, 3, 3)
    col = sh_shade(albedo, n, sh)
    base = 0.8 * SH_A[0] * SH_C[0]
    torch.testing.assert_close(col[0, 0], torch.tensor([base, base + a1c1, base]))
    torch.testing.assert_close(col[0, 1], torch.tensor([base, base, base]))
    with pytest.raises(ValueError):
        sh_coefficients(torch.zeros(1, 9))


def test_forward_rejects_wrong_sizes(ict_model: FaceModel) -> None:
    wrong = CoeffLayout(80, 64, 80).zeros(1)
    with pytest.raises(ValueError, match="id must be"):
        ict_model(wrong)


def test_save_load_round_trip(tmp_path: Path) -> None:
    arrays = sphere_arrays()
    m = FaceModel(arrays)
    path = tmp_path / "sphere.npz"
    m.save(path)
    m2 = FaceModel.load(path)
    assert m2.name == "sphere" and m2.layout == m.layout and m2.exp_names == m.exp_names
    for key in ("mean_shape", "id_basis", "exp_basis", "albedo_basis", "tri", "mesh_tri", "landmark_idx", "uv"):
        assert torch.equal(getattr(m, key), getattr(m2, key)), key
    p = random_params(m.layout, 2)
    torch.testing.assert_close(m(p).color, m2(p).color)
    # No pickles inside: np.load with allow_pickle=False reads every entry.
    with np.load(path, allow_pickle=False) as data:
        for k in data.files:
            _ = data[k]
    # Without UVs.
    save_arrays(FaceModelArrays(**{**arrays.__dict__, "uv": None}), tmp_path / "nouv.npz")
    assert load_arrays(tmp_path / "nouv.npz").uv is None


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        FaceModel.load(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, mean_shape=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="missing keys"):
        FaceModel.load(partial)
    with pytest.raises(FileNotFoundError):
        FaceModel.load(tmp_path / "absent.npz")


def test_arrays_validation() -> None:
    a = sphere_arrays()
    with pytest.raises(ValueError, match="tri"):
        FaceModelArrays(**{**a.__dict__, "tri": a.tri + 10_000})
    with pytest.raises(ValueError, match="landmark_idx"):
        FaceModelArrays(**{**a.__dict__, "landmark_idx": np.arange(5)})
    with pytest.raises(ValueError, match="exp_kind"):
        FaceModelArrays(**{**a.__dict__, "exp_kind": "other"})


def test_module_moves_with_to() -> None:
    m = FaceModel(sphere_arrays()).to(torch.float64)
    assert m.mean_shape.dtype == torch.float64 and m.tri.dtype == torch.int64
    out = m(random_params(m.layout, 1).to(torch.float64))
    assert out.vertices.dtype == torch.float64


def test_fingerprint_tracks_content(tmp_path: Path) -> None:
    a = sphere_arrays()
    m1, m2 = FaceModel(a), FaceModel(a)
    assert m1.fingerprint() == m2.fingerprint() and len(m1.fingerprint()) == 16
    changed = FaceModel(FaceModelArrays(**{**a.__dict__, "albedo_mean": a.albedo_mean + 0.01}))
    assert changed.fingerprint() != m1.fingerprint()
    m1.save(tmp_path / "m.npz")
    assert FaceModel.load(tmp_path / "m.npz").fingerprint() == m1.fingerprint()


@pytest.mark.gpu
def test_forward_on_cuda_matches_cpu(ict_model: FaceModel) -> None:
    p = random_params(ict_model.layout, 2)
    ref = ict_model(p)
    gpu = ict_model.to("cuda")
    try:
        out = gpu(p.to("cuda"))
        assert gpu.tri_int32.device.type == "cuda"
        for key in ("vertices", "normals", "color", "landmarks_2d", "clip"):
            torch.testing.assert_close(getattr(out, key).cpu(), getattr(ref, key), atol=1e-3, rtol=1e-4)
    finally:
        ict_model.to("cpu")
